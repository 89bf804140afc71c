"""Fault injection: random config.json documents never crash clawd.

10,000 documents each (hypothesis, derandomized so CI is deterministic): the real schema
(config.example.json) with random JSON values at random keys, wrong types, huge numbers,
unicode, nested junk, unknown keys, and plain garbage. The only outcomes allowed are a
`Settings` or a `ConfigError` whose message is non-empty and says one line per problem.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawd.config.load import read_config_file, settings_from_data
from clawd.config.settings import Settings
from clawd.core.errors import ConfigError

pytestmark = pytest.mark.timeout(120)

EXAMPLE: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "config.example.json").read_text()
)
# Every (section, key) of the real schema; top-level scalars have key None.
SCHEMA_KEYS: list[tuple[str, str | None]] = [
    (section, key)
    for section, body in EXAMPLE.items()
    for key in (list(body) if isinstance(body, dict) else [None])
] + [("home", None), ("peers", None)]

FUZZ = settings(
    max_examples=10_000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HEADER = re.compile(r"^.+: (\d+) problems?:$")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # beyond float range
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**18, 65536, 0.0, -0.0, 1e308, 5e-324]),
    st.text(max_size=30),
    st.sampled_from(
        ["", " ", "03:00", "6h", "1h30m", "off", "each", "25:99", "99999999999999999999h",
         "127.0.0.1:9464", ":", "~", "~nobody-here-xyz", "~root", "\x00", "../..", "/",
         "ünïcødé ☃ 🐙", "\n\r\t", "\u202e", "json", "postgres", "known_hosts", "accept-new",
         "zstd", "debug", "1e999", "NaN"]
    ),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=4),
    ),
    max_leaves=6,
)


@st.composite
def config_documents(draw: st.DrawFn) -> Any:
    """Mostly the example with random values at real keys; sometimes junk throughout."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "sparse", "garbage"]))
    if kind == "garbage":
        return draw(json_values)
    doc: dict[str, Any] = json.loads(json.dumps(EXAMPLE)) if kind == "mutated" else {}
    for section, key in draw(st.lists(st.sampled_from(SCHEMA_KEYS), min_size=1, max_size=6)):
        value = draw(json_values)
        if key is None:
            doc[section] = value
        else:
            body = doc.get(section)
            if not isinstance(body, dict):
                body = doc[section] = {}
            body[key] = value
    if draw(st.integers(0, 9)) == 0:  # an unknown key somewhere
        where = draw(st.sampled_from([None, *EXAMPLE]))
        target = doc if where is None or not isinstance(doc.get(where), dict) else doc[where]
        target[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        doc["peers"] = draw(
            st.lists(
                st.dictionaries(
                    st.sampled_from(["name", "ip", "sshUser", "sshPort", "gatewayId", "x"]),
                    json_values,
                    max_size=6,
                ),
                max_size=3,
            )
        )
    return doc


def assert_clean_outcome(outcome: Settings | ConfigError) -> None:
    if isinstance(outcome, Settings):
        return
    message = str(outcome)
    assert message.strip(), "a ConfigError must say what is wrong"
    lines = message.split("\n")
    header = HEADER.match(lines[0])
    if header is None:  # a file-level error (unreadable, not JSON, not an object)
        assert len(lines) == 1, f"file-level error spans lines: {message!r}"
        return
    problems = int(header.group(1))
    assert problems >= 1
    assert len(lines) == problems + 1, f"not one line per problem: {message!r}"
    assert all(line.startswith("  ") and line.strip() for line in lines[1:]), message


def validate(data: Any) -> Settings | ConfigError:
    try:
        if not isinstance(data, dict):
            # what read_config_file refuses before validation
            raise ConfigError(f"config.json: must hold a JSON object, found {type(data).__name__}")
        return settings_from_data(data, environ={}, config_dir=Path("/nonexistent/cfg"))
    except ConfigError as exc:
        return exc


@FUZZ
@given(config_documents())
def test_random_config_documents_give_settings_or_one_config_error(data: Any) -> None:
    assert_clean_outcome(validate(data))


def test_a_home_of_a_user_this_machine_lacks_is_one_config_error() -> None:
    """Found by the fuzzer above: `~0` made pathlib raise RuntimeError (a stack trace)."""
    outcome = validate({"home": "~0"})
    assert isinstance(outcome, ConfigError)
    assert_clean_outcome(outcome)
    assert "home: names a user this machine does not have" in str(outcome)


file_bodies = st.one_of(
    config_documents().map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
    config_documents().map(lambda d: json.dumps(d)[: max(1, len(json.dumps(d)) // 2)].encode()),
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"\xef\xbb\xbf{}", b"{}", b"[]", b"null", b"1e999", b"NaN", b"\xff"]),
)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz") / "config.json"


@settings(FUZZ, max_examples=5_000)  # a file write per example: 10,000 came near 60 s
@given(body=file_bodies)
def test_random_config_files_give_settings_or_one_config_error(
    config_path: Path, body: bytes
) -> None:
    config_path.write_bytes(body)
    outcome: Settings | ConfigError
    try:
        data = read_config_file(config_path)
        outcome = settings_from_data(data, environ={}, config_dir=config_path.parent)
    except ConfigError as exc:
        outcome = exc
    assert_clean_outcome(outcome)
    if isinstance(outcome, Settings):
        # Whatever was accepted is usable: finite timings.
        assert math.isfinite(outcome.ping.interval_seconds)
