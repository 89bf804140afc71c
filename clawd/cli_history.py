"""`clawd incidents`, `clawd report`: history from PostgreSQL."""

from __future__ import annotations

import argparse


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the history commands to the `clawd` parser."""
