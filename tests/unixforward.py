"""A TCP -> unix-socket forwarder: PostgreSQL of the root namespace for daemons in others.

``python tests/unixforward.py HOST PORT SOCKET`` listens on HOST:PORT; for each connection
it opens the unix socket SOCKET (e.g. PostgreSQL's ``<sockdir>/.s.PGSQL.<port>``) and pipes
bytes both ways until either side closes. A unix socket is found by its path, whatever the
network namespace, so started inside a namespace (``ip netns exec NS ...``) it makes a
server of the root namespace reachable at that namespace's address. Prints ``listening
HOST:PORT`` once it accepts; exits 0 on SIGTERM or SIGINT.

:class:`UnixForwarder` starts one (through a command prefix) and stops it. Plain module, no
pytest imports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["UnixForwarder", "main"]

CHUNK = 1 << 16
READY = "listening"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def _serve(args: argparse.Namespace) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            try:
                upstream_r, upstream_w = await asyncio.open_unix_connection(args.socket)
            except OSError as exc:
                print(f"unixforward: {args.socket}: {exc}", file=sys.stderr, flush=True)
                return
            try:
                # Either side closing ends the connection (PostgreSQL needs no half-close).
                pipes = {
                    asyncio.create_task(_pipe(client_r, upstream_w)),
                    asyncio.create_task(_pipe(upstream_r, client_w)),
                }
                try:
                    await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pipe in pipes:
                        pipe.cancel()
                    await asyncio.gather(*pipes, return_exceptions=True)
            finally:
                await _close(upstream_w)
        finally:
            await _close(client_w)
            tasks.discard(task)

    server = await asyncio.start_server(handle, args.host, args.port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY} {args.host}:{args.port}", flush=True)
    await stop.wait()
    server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="forward TCP connections to a unix socket")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("socket", help="the unix socket each connection is piped to")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


class UnixForwarder:
    """This script as a process (run with `prefix`, e.g. ``ip netns exec NS``), started
    by :meth:`start` (blocking until it listens) and ended by :meth:`stop` (SIGTERM)."""

    def __init__(
        self,
        host: str,
        port: int,
        socket_path: Path,
        *,
        prefix: Sequence[str] = (),
        log: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.socket_path = socket_path
        self.prefix = tuple(prefix)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            raise RuntimeError("forwarder already started")
        stderr = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        try:
            script = str(Path(__file__).resolve())
            args = [script, self.host, str(self.port), str(self.socket_path)]
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        finally:
            if not isinstance(stderr, int):
                stderr.close()
        assert self.process.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 256)
                if not chunk:
                    break  # exited
                line += chunk
        if not line.startswith(READY.encode()):
            self.stop()
            log = self.log.read_text(errors="replace") if self.log is not None else ""
            raise RuntimeError(
                f"forwarder {self.host}:{self.port} -> {self.socket_path} did not start"
                f" within {timeout} s: {line!r} {log}"
            )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, reaped (SIGKILL after `timeout`); its exit code (None: never started)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return code


if __name__ == "__main__":
    sys.exit(main())
