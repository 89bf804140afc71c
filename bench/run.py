"""Entry point of ``make bench``: ``python -m bench.run [--quick]``.

Each benchmark returns a markdown body; it is printed and stored in ``bench/results.md``
between ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` markers, so benchmarks can add or
replace their own section without touching the others.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench import repository_throughput

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer rows and one run of each (under a minute)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_PATH,
        help=f"markdown file to update (default {RESULTS_PATH})",
    )
    args = parser.parse_args(argv)

    body = repository_throughput.run(quick=args.quick)
    print(body, flush=True)
    update_section(args.results, repository_throughput.SECTION, body)
    print(f"\nwritten to {args.results}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
