"""Announcer process for ``bench/membership_cost.py``: groups of claw-clan services over mDNS.

Run as ``python -m bench.membership_announcer SPEC_JSON``; SPEC is ``{"service_type": ...,
"groups": {NAME: [{"instance", "address", "port", "txt" (hex)}, ...]}}``. Nothing is announced
until asked; then one command per stdin line:

* ``register NAME`` -- probe and announce every service of the group at once. Replies
  ``{"event": "registered", "group", "announced": {instance: t}, "done": t}`` where each ``t``
  is ``time.monotonic()`` (CLOCK_MONOTONIC: the same clock in every process of the machine)
  when that service's probing ended, i.e. when its first announcement went out.
* ``unregister NAME`` -- goodbyes for the whole group; replies ``{"event": "unregistered",
  "group", "sent": t}`` once they were sent.

EOF or ``quit`` sends goodbyes for whatever is still registered and exits. Its own process, so
that zeroconf's CPU is not the daemon's or the benchmark's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

# Registering hundreds at once is fine for zeroconf, but each probe is three packets per
# service; batches keep the loopback socket's buffer from dropping them.
BATCH = 250


def _reply(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _announce(spec: dict[str, Any]) -> None:
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    service_type: str = spec["service_type"]

    def service_info(peer: dict[str, Any]) -> AsyncServiceInfo:
        name = f"{peer['instance']}.{service_type}"
        return AsyncServiceInfo(
            service_type,
            name,
            port=peer["port"],
            properties=bytes.fromhex(peer["txt"]),
            server=name,
            parsed_addresses=[peer["address"]],
        )

    groups = {
        name: {p["instance"]: service_info(p) for p in peers}
        for name, peers in spec["groups"].items()
    }
    registered: set[str] = set()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    async with AsyncZeroconf(interfaces=spec.get("interfaces", ["127.0.0.1"])) as aiozc:

        async def register(instance: str, info: AsyncServiceInfo) -> tuple[str, float, Any]:
            broadcast = await aiozc.async_register_service(info)  # returns after probing
            return instance, time.monotonic(), broadcast

        _reply("ready")
        while line := await reader.readline():
            cmd, _, group = line.decode().strip().partition(" ")
            if cmd == "quit":
                break
            infos = groups[group]
            if cmd == "register":
                announced: dict[str, float] = {}
                items = list(infos.items())
                for start in range(0, len(items), BATCH):
                    done = await asyncio.gather(*(register(i, n) for i, n in items[start:][:BATCH]))
                    await asyncio.gather(*(b for _, _, b in done))
                    announced |= {i: t for i, t, _ in done}
                registered.add(group)
                _reply("registered", group=group, announced=announced, done=time.monotonic())
            elif cmd == "unregister":
                for start in range(0, len(infos), BATCH):
                    batch = list(infos.values())[start:][:BATCH]
                    tasks = await asyncio.gather(
                        *(aiozc.async_unregister_service(i) for i in batch)
                    )
                    await asyncio.gather(*tasks)
                registered.discard(group)
                _reply("unregistered", group=group, sent=time.monotonic())
        # Leaving the block sends goodbyes for the rest and closes the sockets.
    transport.close()


if __name__ == "__main__":
    asyncio.run(_announce(json.loads(sys.argv[1])))
