"""`clawd run` as a subprocess, the way a user or systemd runs it, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT = 30.0


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`clawd ARGS` against `home`, as a separate process."""
    env = dict(os.environ, CLAW_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "clawd.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class DaemonProcess:
    """A running `clawd run`; its stderr (the log) is collected as it comes."""

    def __init__(
        self, home: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
    ) -> None:
        self.home = home
        full_env = dict(os.environ, CLAW_HOME=str(home), **(env or {}))
        full_env.pop("JOURNAL_STREAM", None)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "clawd.cli.main", "run"],
            env=full_env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), False)
        self.log = ""

    def read(self) -> None:
        if self.proc.stderr is None or self.proc.stderr.closed:
            return
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.proc.stderr.fileno(), 1 << 16):
                self.log += chunk.decode(errors="replace")

    def _find(self, needle: str, after: int) -> str | None:
        self.read()
        return next((ln for ln in self.log[after:].splitlines() if needle in ln), None)

    def wait_log(self, needle: str, timeout: float = START_TIMEOUT, after: int = 0) -> str:
        """The first log line containing `needle` written after offset `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (line := self._find(needle, after)) is not None:
                return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} within {timeout}s:\n{self.log}")

    async def await_log(self, needle: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (line := self._find(needle, 0)) is not None:
                return line
            assert self.proc.poll() is None, f"clawd exited:\n{self.log}"
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {needle!r} within {timeout}s:\n{self.log}")

    def incidents(self) -> list[tuple[str, str]]:
        path = self.home / "incidents.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [(r["gatewayId"], r["eventType"]) for r in rows]

    async def wait_incident(
        self, gateway: str, event: str, timeout: float, occurrence: int = 1
    ) -> float:
        """Seconds until the `occurrence`-th such incident is in incidents.jsonl."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.incidents().count((gateway, event)) >= occurrence:
                return time.monotonic() - started
            self.read()
            assert self.proc.poll() is None, f"clawd exited:\n{self.log}"
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event} for {gateway} within {timeout}s: {self.incidents()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.home, *args)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> int:
        """Send `sig` (if still running), reap the process, close its pipe; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.read()
            if self.proc.stderr is not None:
                self.proc.stderr.close()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop(timeout=10)
