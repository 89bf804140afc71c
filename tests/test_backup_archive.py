"""The JSON store archive: consistent while the daemon rewrites files, symlinks archived by
content, damaged archives caught."""

from __future__ import annotations

import json
import os
import tarfile
import threading
from pathlib import Path

import pytest
from helpers_backup import write_json_store

from clawd.act.backup import archive
from clawd.act.backup.errors import BackupError
from clawd.core.atomic import append_durable, write_atomic
from clawd.core.model import utcnow


def _write(home: Path, path: Path) -> list[str]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return archive.write_archive(home, fd)
    finally:
        os.close(fd)


def test_archive_is_consistent_while_files_are_replaced_and_appended(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    peers = [home / "peers" / f"gw-{i}.json" for i in range(200)]
    for p in peers:
        write_atomic(p, b"{}")
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            body = json.dumps({"n": n, "pad": "x" * (n % 700)}).encode()
            write_atomic(peers[n % len(peers)], body)
            append_durable(home / "incidents.jsonl", json.dumps({"n": n}).encode() + b"\n")

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for i in range(15):
            path = tmp_path / f"a{i}.tar.gz"
            members = _write(home, path)
            assert archive.read_check(path) == members  # every .json member parses
            assert len(members) == 5 + 1 + 201  # five files, peers/, its files
    finally:
        stop.set()
        writer.join()


def test_symlinked_files_are_archived_by_content(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    managed = tmp_path / "managed-config.json"
    managed.write_text('{"backend": "json", "managed": true}')
    (home / "config.json").unlink()
    (home / "config.json").symlink_to(managed)
    path = tmp_path / "a.tar.gz"
    assert "config.json" in _write(home, path)
    archive.read_check(path)
    restored = tmp_path / "restored"
    restored.mkdir()
    done = archive.restore_archive(restored, path, utcnow())
    assert json.loads((restored / "config.json").read_text())["managed"] is True
    assert not (restored / "config.json").is_symlink()
    assert "config.json" in done.restored


def test_damaged_or_foreign_archives_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    path = tmp_path / "a.tar.gz"
    _write(home, path)
    data = path.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(BackupError, match="damaged"):
        archive.read_check(cut)

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(home / "state.json", arcname="../state.json")
    with pytest.raises(BackupError, match="unexpected member"):
        archive.read_check(evil)
    with pytest.raises(BackupError, match="unexpected member"):
        archive.restore_archive(home, evil, utcnow())
    assert not (tmp_path / "state.json").exists()
