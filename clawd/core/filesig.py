"""Has a file changed since we read it? Its inode, size and mtime say so without reading it."""

from __future__ import annotations

from pathlib import Path

Signature = tuple[int, int, int]  # inode, size, mtime in nanoseconds


def file_signature(path: Path) -> Signature | None:
    """The file's signature; None when there is no file (other errors raise)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
