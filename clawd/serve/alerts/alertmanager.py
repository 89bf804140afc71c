"""A receiver that posts to a Prometheus Alertmanager (API v2), so its routes, grouping,
silences and inhibitions decide who is paged.

What each message becomes (labels `alertname`, `gateway`, `severity`, `fleet`; annotations
`summary` = title, `description` = body):

* a state that begins and ends -- `offline`/`recovery` (`online` ends it too),
  `partition`/`partition_end`, `flap_start`/`flap_stop` -- is one alert, firing from the
  first and resolved (`endsAt` = the message's time) by the second;
* anything else (`unreachable`, `leader_change`, `test`, `digest`, ...) is a one-shot
  `ClawdEvent` with a label `event`, from the message's time to five minutes after it is sent.

A partition is the fleet's, not a machine's: it has no `gateway` label (the instance that
reported it names itself as `gateway` in its message, and another may report its end), so
`partition_end` resolves the partition whoever saw it. One-shot events carry the message's
gateway, none when it has none. (An empty label value is no label to Alertmanager: it drops
it, and a matcher `gateway=""` matches these.)

A firing alert is sent with `endsAt` = now + `ttl` and kept as active (on disk, so it
outlives a restart); `refresh()` re-posts the active ones with a new `endsAt`. Alertmanager
resolves an alert whose `endsAt` passed: when clawd is gone for longer than `ttl`, its
alerts resolve by themselves instead of firing forever.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import structlog

from clawd.core.atomic import write_atomic
from clawd.serve.alerts.message import DIGEST_EVENT, Message
from clawd.serve.alerts.receivers import DeliveryError, receiver_id, redact_url, scrub

log = structlog.get_logger("clawd.serve.alerts")

API_PATH = "/api/v2/alerts"
STATE_FORMAT = 1
ONE_SHOT = timedelta(minutes=5)
BODY_SHOWN = 120  # of an error answer, in a DeliveryError

# event -> (alertname, severity, firing?)
_STATEFUL: dict[str, tuple[str, str, bool]] = {
    "offline": ("ClawdMachineDown", "critical", True),
    "recovery": ("ClawdMachineDown", "critical", False),
    "online": ("ClawdMachineDown", "critical", False),
    "partition": ("ClawdPartition", "critical", True),
    "partition_end": ("ClawdPartition", "critical", False),
    "flap_start": ("ClawdMachineFlapping", "warning", True),
    "flap_stop": ("ClawdMachineFlapping", "warning", False),
}
_FLEET_WIDE = {"ClawdPartition"}
ONE_SHOT_ALERT = "ClawdEvent"
FIRE, RESOLVE, ONCE = "fire", "resolve", "once"
_INFO_EVENTS = {"test", DIGEST_EVENT}


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _key(labels: dict[str, str]) -> str:
    return f"{labels['alertname']}/{labels.get('gateway', '')}"


class AlertmanagerReceiver:
    """One Alertmanager, by its base URL (`http(s)://[user:password@]host[:port][/path]`).

    `send` and `refresh` are bounded by `timeout` seconds each; `close()` ends the HTTP
    session. The active alerts live in `state_dir / alertmanager-<id>.json` (0600), read at
    the first send or refresh.
    """

    def __init__(
        self,
        base_url: str,
        *,
        fleet: str,
        state_dir: Path,
        timeout: float = 10.0,
        ttl: float = 3600.0,
    ) -> None:
        url = base_url.strip()
        self.name = redact_url(url)
        self.id = receiver_id(url)
        self.fleet = fleet
        self.timeout = timeout
        self.ttl = ttl
        self.state_path = state_dir / f"alertmanager-{self.id}.json"
        self._endpoint, self._headers, self._hidden = self._parse(url)
        self._session: aiohttp.ClientSession | None = None
        self._active: dict[str, dict[str, Any]] | None = None  # None: not read yet
        self._lock = asyncio.Lock()

    def _parse(self, url: str) -> tuple[str, dict[str, str], list[str]]:
        bad = ValueError(f"not an Alertmanager URL (http(s)://host[:port][/path]): {self.name}")
        if any(c.isspace() for c in url):
            raise bad
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise bad from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad
        if parts.query or parts.fragment or "#" in url or "?" in url:
            raise bad
        hidden: list[str] = []
        headers: dict[str, str] = {}
        if parts.username is not None or parts.password is not None:
            userinfo = parts.netloc.rpartition("@")[0]
            hidden += [userinfo, *userinfo.split(":")]
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        host = parts.hostname
        if ":" in host:
            host = f"[{host}]"
        path = parts.path.rstrip("/")
        hidden += [s for s in path.split("/") if s]
        endpoint = f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}{path}"
        return endpoint + API_PATH, headers, hidden

    # -- the alerts

    def _labels(self, alertname: str, gateway: str, severity: str) -> dict[str, str]:
        labels = {"alertname": alertname, "gateway": gateway, "severity": severity}
        labels["fleet"] = self.fleet
        # An empty label is no label to Alertmanager (it drops it): left out here too.
        return {name: value for name, value in labels.items() if value}

    def _alert_of(self, message: Message) -> tuple[dict[str, Any], str]:
        """The alert `message` posts, and what it does: FIRE, RESOLVE or ONCE."""
        annotations = {"summary": message.title, "description": message.body}
        stateful = _STATEFUL.get(message.event)
        if stateful is None:
            severity = "info" if message.event in _INFO_EVENTS else "warning"
            labels = self._labels(ONE_SHOT_ALERT, message.gateway or "", severity)
            labels["event"] = message.event
            alert = {
                "labels": labels,
                "annotations": annotations,
                "startsAt": _iso(message.at),
                # From when it is sent: one delivered late (Alertmanager was down) would
                # arrive resolved already, and Alertmanager would tell nobody.
                "endsAt": _iso(max(message.at, datetime.now(UTC)) + ONE_SHOT),
            }
            return alert, ONCE
        alertname, severity, firing = stateful
        gateway = "" if alertname in _FLEET_WIDE else (message.gateway or "")
        labels = self._labels(alertname, gateway, severity)
        alert = {"labels": labels, "annotations": annotations, "startsAt": _iso(message.at)}
        assert self._active is not None
        was = self._active.get(_key(labels))
        if was is not None:
            alert["startsAt"] = was["startsAt"]  # the same alert, again or ended
        if not firing:
            alert["endsAt"] = _iso(message.at)
        return alert, FIRE if firing else RESOLVE

    def _until(self) -> str:
        return _iso(datetime.now(UTC) + timedelta(seconds=self.ttl))

    async def send(self, message: Message) -> None:
        async with self._lock:
            await self._load()
            assert self._active is not None
            alert, does = self._alert_of(message)
            key = _key(alert["labels"])
            if does == FIRE:
                await self._post([{**alert, "endsAt": self._until()}])
                self._active[key] = alert
                await self._save()
                return
            await self._post([alert])
            if does == RESOLVE and self._active.pop(key, None) is not None:
                await self._save()

    async def refresh(self) -> None:
        """Post every active alert again, firing for `ttl` more seconds."""
        async with self._lock:
            await self._load()
            assert self._active is not None
            if self._active:
                until = self._until()
                await self._post([{**a, "endsAt": until} for a in self._active.values()])

    def active(self) -> list[dict[str, Any]]:
        """The firing alerts as last sent (without `endsAt`); empty before the first use."""
        return [dict(a) for a in (self._active or {}).values()]

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- HTTP

    async def _post(self, alerts: list[dict[str, Any]]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session.post(self._endpoint, json=alerts) as answer:
                    if answer.status // 100 == 2:
                        return
                    text = (await answer.text(errors="replace"))[:BODY_SHOWN]
                    status = answer.status
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            reason = scrub(f"{type(exc).__name__}: {exc}", self._hidden)
            raise DeliveryError(f"cannot reach Alertmanager: {reason}") from None
        reason = scrub(text, self._hidden)
        raise DeliveryError(
            f"Alertmanager answered HTTP {status}" + (f": {reason}" if reason else "")
        )

    # -- state on disk

    async def _load(self) -> None:
        if self._active is None:
            self._active = await asyncio.to_thread(self._read)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.state_path.read_bytes())
            alerts = data["active"]
            if data.get("alertmanager") != STATE_FORMAT or not isinstance(alerts, list):
                raise ValueError("not an Alertmanager receiver's state")
            active: dict[str, dict[str, Any]] = {}
            for alert in alerts:
                labels = alert["labels"]
                if not all(isinstance(v, str) for v in labels.values()):
                    raise ValueError("a label is not a string")
                str(alert["startsAt"])
                active[_key(labels)] = alert
            return active
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Only a person or a bad disk gets here (written atomically). What fired then
            # resolves by itself within ttl.
            log.warning(
                "alerts_alertmanager_state_unreadable",
                receiver=self.name,
                path=str(self.state_path),
                error=str(exc)[:200],
            )
            return {}

    async def _save(self) -> None:
        assert self._active is not None
        data = {"alertmanager": STATE_FORMAT, "active": list(self._active.values())}
        encoded = (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode()
        try:
            await asyncio.to_thread(self._write, encoded)
        except OSError as exc:
            # Alertmanager has the alert; only a restart before the next save forgets it
            # (then it resolves by itself within ttl).
            log.warning(
                "alerts_alertmanager_state_not_saved",
                receiver=self.name,
                path=str(self.state_path),
                error=str(exc)[:200],
            )

    def _write(self, data: bytes) -> None:
        self.state_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.state_path, data)
