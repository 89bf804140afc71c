"""A fast text exposition of the per-peer families, which are nearly all of a large scrape.

prometheus_client's generate_latest validates and escapes every label of every
sample: about 35 ms for 1,000 peers, all of it holding the event loop (or, in a
thread, the GIL). Here each peer's escaped labels are built once and reused.
"""

from __future__ import annotations

from clawd.core.model import PeerStatus
from clawd.serve.metrics.collector import PEER_FAMILIES, PHI_CAP, STATUSES
from clawd.serve.metrics.source import ScrapeState


def escape(value: str) -> str:
    """A label value escaped as the text format requires (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class PeerText:
    """Renders clawd_peer_up/_status/_missed_pings/_phi and clawd_leader from a ScrapeState."""

    def __init__(self) -> None:
        self._labels: dict[tuple[str, str], str] = {}

    def render(self, state: ScrapeState) -> str:
        """The four families in the text format, HELP and TYPE lines included."""
        previous, labels = self._labels, {}
        up, status, missed, phi, leader = [], [], [], [], []
        me = state.me
        for peer in (me, *state.peers):
            key = (peer.gateway, peer.name)
            text = previous.get(key) or f'gateway="{escape(key[0])}",name="{escape(key[1])}"'
            labels[key] = text
            leader.append(f"clawd_leader{{{text}}} {int(state.leader == peer.gateway)}\n")
            if peer is me:
                continue
            up.append(f"clawd_peer_up{{{text}}} {int(peer.status is PeerStatus.ONLINE)}\n")
            for s in STATUSES:
                value = int(s is peer.status)
                status.append(f'clawd_peer_status{{{text},status="{s.value}"}} {value}\n')
            missed.append(f"clawd_peer_missed_pings{{{text}}} {peer.missed_pings}\n")
            phi.append(f"clawd_peer_phi{{{text}}} {round(min(peer.phi, PHI_CAP), 3)}\n")
        self._labels = labels  # forgets peers that left the view
        lines = dict(zip(PEER_FAMILIES, (up, status, missed, phi, leader), strict=True))
        return "".join(
            f"# HELP {name} {doc}\n# TYPE {name} gauge\n" + "".join(lines[name])
            for name, doc in PEER_FAMILIES.items()
        )
