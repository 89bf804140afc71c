"""The `clawd` command. `clawd probe` skips importing the rest of the CLI (settings, history,
skills: ~0.2 s of start-up): older daemons (before direct-tcpip probes) run it remotely."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["probe"]:
        from clawd.cli.main import main as cli_main

        return cli_main(args)
    from clawd.cli import output as cli_output

    try:
        code = _probe(args)
        cli_output.flush()
    except BrokenPipeError as exc:
        return cli_output.output_cut(exc)
    return code


def _probe(args: list[str]) -> int:
    import argparse

    from clawd.core.errors import ClawdError
    from clawd.sources import probe

    parser = argparse.ArgumentParser(prog="clawd probe")
    parser.add_argument("target", metavar="TARGET")
    parser.add_argument("--timeout", metavar="SECONDS")
    parser.add_argument("--json", action="store_true")
    parsed = parser.parse_args(args[1:])
    try:
        return probe.run(parsed.target, parsed.timeout, as_json=parsed.json)
    except ClawdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
