"""clawd/core/text.py: the ways of making peer-supplied text printable."""

from __future__ import annotations

from clawd.core.text import escape_char, escape_unprintable, printable, replace_unprintable

EVIL = "näme\x1b[31m\n\\\u202e"


def test_printable_is_ascii_with_every_other_character_escaped() -> None:
    assert printable(EVIL) == "n\\xe4me\\x1b[31m\\n\\\\\\u202e"
    assert printable(EVIL).isascii() and printable(EVIL).isprintable()


def test_escape_unprintable_keeps_accents_and_backslashes() -> None:
    assert escape_unprintable(EVIL) == "näme\\x1b[31m\\n\\\\u202e"
    assert escape_unprintable("plain näme") == "plain näme"


def test_replace_unprintable_marks_each_character() -> None:
    assert replace_unprintable(EVIL) == "näme?[31m?\\?"
    assert replace_unprintable("a\tb", "_") == "a_b"


def test_escape_char_spells_one_character_as_python_does() -> None:
    assert [escape_char(c) for c in "\n\\\x7f\u202e\U0001f600"] == [
        "\\n",
        "\\\\",
        "\\x7f",
        "\\u202e",
        "\\U0001f600",
    ]
