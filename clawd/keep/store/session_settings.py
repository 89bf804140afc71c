"""The server settings of every session clawd opens on the shared database."""

from __future__ import annotations

# A daemon cut off in the middle of a transaction (a partition; a machine gone without
# closing its TCP connection) would keep its row and advisory locks until the server's
# TCP keepalives give up on it -- two hours by default -- and every other machine's
# judgement of the fleet's verdicts would wait on them (measured: a cut during one of the
# minority's writes left the majority without any verdict for a minute and more).
# PostgreSQL ends a session idle inside a transaction for this long; clawd's transactions
# send their statements back to back, so only a stalled one is ended.
IDLE_IN_TRANSACTION_MS = 5_000


def session_settings(application_name: str | None = None) -> dict[str, str]:
    """`server_settings` for asyncpg.connect / create_pool."""
    settings = {"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)}
    if application_name is not None:
        settings["application_name"] = application_name
    return settings
