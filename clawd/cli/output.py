"""`clawd … | head`: output cut by its reader ends the command quietly, like other tools."""

from __future__ import annotations

import select
import sys

from clawd.core.logwriter import to_devnull

# What a shell reports for a tool that SIGPIPE ended (128 + 13): `set -o pipefail` sees the
# same from clawd as from `seq 100000 | head -3`.
EXIT_OUTPUT_CUT = 141


def _reader_gone(fd: int) -> bool:
    """True when `fd` is a pipe or socket whose reading end is closed."""
    poller = select.poll()
    try:
        poller.register(fd, select.POLLOUT)
    except (OSError, ValueError):
        return False
    return any(events & select.POLLERR for _, events in poller.poll(0))


def output_cut(exc: BrokenPipeError) -> int:
    """stdout's (or stderr's) reader went away: the rest goes to /dev/null (the
    interpreter's final flush then succeeds), exit quietly. Any other broken pipe (a
    socket) is a real error: raised again."""
    gone = [fd for fd in (1, 2) if _reader_gone(fd)]
    if not gone:
        raise exc
    to_devnull(gone)
    return EXIT_OUTPUT_CUT


def flush() -> None:
    """Write what is buffered now, so that a cut pipe shows here, not at interpreter exit."""
    sys.stdout.flush()
    sys.stderr.flush()
