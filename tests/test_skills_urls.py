"""Credentials in repository URLs are masked wherever clawd shows them."""

from __future__ import annotations

import pytest

from clawd.act.skills.git import git_env
from clawd.act.skills.urls import mask_text, mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:ghp_secret@github.com/org/skills.git",
            "https://user:***@github.com/org/skills.git",
        ),
        ("https://ghp_token@github.com/org/skills", "https://***@github.com/org/skills"),
        ("http://:pw@host/r", "http://***@host/r"),
        ("ssh://git@github.com/org/skills.git", "ssh://git@github.com/org/skills.git"),
        ("ssh://git:pw@github.com/org/skills.git", "ssh://git:***@github.com/org/skills.git"),
        ("git@github.com:org/skills.git", "git@github.com:org/skills.git"),
        ("https://github.com/org/skills.git", "https://github.com/org/skills.git"),
        ("file:///srv/skills.git", "file:///srv/skills.git"),
        ("/srv/skills.git", "/srv/skills.git"),
        ("HTTPS://u:p@h/x", "HTTPS://u:***@h/x"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_mask_text_masks_every_url_and_the_configured_one() -> None:
    url = "https://bob:hunter2@example.com/skills.git"
    text = (
        f"fatal: unable to access '{url}/': error; "
        "also see https://eve:other@example.org/x and 'https://tok@example.net/y'"
    )
    masked = mask_text(text, url)
    for secret in ("hunter2", "other", "tok@"):
        assert secret not in masked
    assert "https://bob:***@example.com/skills.git" in masked
    assert "https://***@example.net/y" in masked


def test_git_never_prompts() -> None:
    env = git_env({"PATH": "/usr/bin", "GIT_DIR": "/elsewhere", "GIT_SSH_COMMAND": "ssh -i k"})
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "GIT_DIR" not in env
    assert env["GIT_SSH_COMMAND"] == "ssh -i k"  # the operator's choice wins
    assert git_env({})["GIT_SSH_COMMAND"] == "ssh -o BatchMode=yes"
