"""Entry point of ``make bench``: ``python -m bench.run [--quick] [--only NAME ...]``.

Runs, in order: repository write throughput (``bench/repository_throughput.py``), SSH ping cost
(``bench/ssh_ping_cost.py``), the daemon under 1,000 peers (``bench/fleet_load.py``), backup
cost vs a bare pg_dump (``bench/backup_cost.py``), write stalls while pruning history
(``bench/prune_stall.py``), ``clawd report`` on 10 million pings (``bench/report_query.py``)
and the phi-accrual vs threshold failure detector on synthetic ping traces
(``bench/detector_traces.py``), the render of a 1,000-peer scrape
(``bench/metrics_render.py``) and what trusted membership costs, the code before issue 14
and this checkout side by side (``bench/membership_cost.py``; ``CLAWD_BENCH_CODE`` /
``CLAWD_BENCH_BASE`` name other trees), and k=3 observers per machine against the full mesh
on real fleets of 4, 8 and 16 machines (``bench/fleet_observers.py``; needs root and sshd),
and the notifications of a real 8-machine fleet: one per real event, and how long after the
fleet's verdict (``bench/notify_latency.py``; root and sshd too).
``--quick`` (a smoke run of every benchmark) takes under 2 minutes plus about 4 for
fleet-observers, the full run about 15 plus about 20 for fleet-observers (2 cores).
Afterwards a summary table of every figure with a goal is put at the top.

Each benchmark returns a markdown body; it is printed and stored in ``bench/results.md``
between ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` markers, so benchmarks can add or
replace their own section without touching the others. A benchmark that fails leaves its
previous section as it was; the run goes on with the others and exits 1.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    backup_cost,
    detector_traces,
    fleet_load,
    fleet_observers,
    membership_cost,
    metrics_render,
    notify_latency,
    prune_stall,
    report_query,
    repository_throughput,
    ssh_ping_cost,
)

RESULTS_PATH = Path(__file__).resolve().parent / "results.md"
RESULTS_TITLE = "# clawd benchmarks\n\nWritten by `make bench` (`python -m bench.run`).\n"


def update_section(path: Path, name: str, body: str) -> None:
    """Create or replace the section ``name`` of ``path``; other sections are kept."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_TITLE
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


SUMMARY = "summary"
_GOAL_ROW = re.compile(
    r"^\|(?P<figure>[^|]+)\|(?P<goal>[^|]+)\|(?P<measured>[^|]+)\|(?P<ratio>[^|]*[✓✗][^|]*)\|$"
)
_SECTION = re.compile(
    r"<!-- (?P<name>[a-z-]+):start -->\n(?P<body>.*?)<!-- (?P=name):end -->", re.DOTALL
)


def summary(text: str) -> str:
    """One table of every figure that has a goal, gathered from the sections of `text`."""
    lines = [
        "## Summary",
        "",
        "Every figure with a goal, from the sections below (each section says when and how "
        "it was measured; comparisons named in a figure were measured side by side in one run).",
        "",
        "| benchmark | figure | goal | measured | ratio |",
        "|---|---|---|---|---|",
    ]
    for section in _SECTION.finditer(text):
        if section["name"] == SUMMARY:
            continue
        for line in section["body"].splitlines():
            row = _GOAL_ROW.match(line.strip())
            if row:
                cells = (row[k].strip() for k in ("figure", "goal", "measured", "ratio"))
                lines.append(f"| {section['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary_first(path: Path) -> None:
    """Move the summary section right under the title."""
    text = path.read_text(encoding="utf-8")
    block = re.search(r"<!-- summary:start -->.*?<!-- summary:end -->\n?", text, re.DOTALL)
    if block is None:
        return
    rest = text.replace(block[0], "")
    head, sep, tail = rest.partition("\n<!-- ")
    path.write_text(head.rstrip("\n") + "\n\n" + block[0] + ("\n<!-- " + tail if sep else ""))


def _ssh_ping_cost(quick: bool) -> str:
    return ssh_ping_cost.render(ssh_ping_cost.run(quick=quick), quick)


# section name -> run(quick) returning the section's markdown body
BENCHMARKS: dict[str, Callable[[bool], str]] = {
    repository_throughput.SECTION: lambda quick: repository_throughput.run(quick=quick),
    ssh_ping_cost.SECTION: _ssh_ping_cost,
    fleet_load.SECTION: lambda quick: fleet_load.run(quick=quick),
    backup_cost.SECTION: lambda quick: backup_cost.render(backup_cost.run(quick), quick),
    prune_stall.SECTION: lambda quick: prune_stall.run(quick=quick),
    report_query.SECTION: lambda quick: report_query.run(quick),
    detector_traces.SECTION: lambda quick: detector_traces.run(quick),
    metrics_render.SECTION: lambda quick: metrics_render.run(quick),
    membership_cost.SECTION: lambda quick: membership_cost.run(quick),
    fleet_observers.SECTION: lambda quick: fleet_observers.run(quick),
    notify_latency.SECTION: lambda quick: notify_latency.run(quick),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smaller, single runs (about 2½ minutes in all)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        help="run only this benchmark (repeatable; default: all, in this order)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_PATH,
        help=f"markdown file to update (default {RESULTS_PATH})",
    )
    args = parser.parse_args(argv)

    names = args.only or list(BENCHMARKS)
    failed: list[str] = []
    began = time.monotonic()
    for name in names:
        print(f"\n=== {name}{' (quick)' if args.quick else ''} ===", flush=True)
        started = time.monotonic()
        try:
            body = BENCHMARKS[name](args.quick)
        except Exception:
            traceback.print_exc()
            print(f"{name} FAILED; its section in {args.results} is left as it was", flush=True)
            failed.append(name)
            continue
        print(body, flush=True)
        update_section(args.results, name, body)
        print(f"{name}: {time.monotonic() - started:.0f} s, written to {args.results}", flush=True)
    if args.results.exists():
        text = args.results.read_text(encoding="utf-8")
        update_section(args.results, SUMMARY, summary(text))
        _summary_first(args.results)
    print(f"\nall benchmarks: {time.monotonic() - began:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
