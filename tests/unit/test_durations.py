"""The one duration grammar (exporter/durations.py), which the config and both generators read."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import durations
from exporter.mixin import generate
from exporter.reader import parse_duration

# Whole milliseconds up to about 30 years: every duration a setting of ours could have.
MILLISECONDS = st.integers(min_value=0, max_value=10**12)
PARTS = st.lists(
    st.tuples(st.integers(min_value=0, max_value=10**6), st.sampled_from(list(durations.UNITS))),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0),
        ("500ms", 0.5),
        ("30s", 30),
        ("15m", 900),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("1.5h", 5400),
        ("30m1h", 5400),
        ("1m1m", 120),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert durations.parse(text) == seconds
    assert durations.seconds(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "5", "m", "5 m", " 5m", "5m ", "-5s", "5s5", "1y", "1.s", ".5s", "5M", "1e3s"]
)
def test_not_a_duration(text: str) -> None:
    assert durations.parse(text) is None
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        durations.seconds(text)


def test_a_duration_beyond_a_float_is_none() -> None:
    assert durations.parse("9" * 400 + "s") is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.5, "500ms"),
        (1, "1s"),
        (90, "1m30s"),
        (900, "15m"),
        (5400, "1h30m"),
        (86400, "1d"),
        (13 * 86400, "13d"),
        # Weeks only when whole, as Prometheus writes them: 8d, not 1w1d.
        (8 * 86400, "8d"),
        (14 * 86400, "2w"),
        (3661.001, "1h1m1s1ms"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert durations.format(seconds) == text


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan, math.inf])
def test_format_refuses_what_is_no_duration(seconds: float) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        durations.format(seconds)


@given(MILLISECONDS)
def test_format_then_parse_is_the_same_duration(ms: int) -> None:
    text = durations.format(ms / 1000)
    assert durations.parse(text) == pytest.approx(ms / 1000, rel=1e-12, abs=1e-9)
    # The written form is canonical: writing what was read gives the same text.
    assert durations.format(durations.seconds(text)) == text


@given(PARTS)
def test_parts_add_up_in_any_order(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{count}{unit}" for count, unit in parts)
    total = sum(count * durations.UNITS[unit] for count, unit in parts)
    assert durations.parse(text) == pytest.approx(total, rel=1e-12, abs=1e-9)


@given(PARTS, st.sampled_from(["", " ", "\t", "\n "]))
def test_the_config_reads_positive_durations_with_blanks_around(
    parts: list[tuple[int, str]], blank: str
) -> None:
    text = "".join(f"{count}{unit}" for count, unit in parts)
    seconds = durations.seconds(text)
    assert parse_duration(f"{blank}{text}{blank}") == (seconds if seconds > 0 else None)


def test_the_rules_generator_reads_the_same_grammar() -> None:
    config = generate.load_config()
    stale = config["alerts"]["data_stale"]["max_age"]
    assert generate.seconds(stale) == durations.seconds(stale) == parse_duration(stale)


def test_time_scaled_rules_write_durations_as_prometheus_does() -> None:
    config = generate.load_config()
    scaled = generate.time_scaled(config, 2)
    for name, alert in scaled["alerts"].items():
        for key, value in alert.items():
            if isinstance(value, str):
                wanted = max(1, round(durations.seconds(config["alerts"][name][key]) / 2))
                assert value == durations.format(wanted), (name, key)
    # Whole seconds, at least one, however fast the demo runs.
    fastest = generate.time_scaled(config, 10**6)
    assert {a["for"] for a in fastest["alerts"].values()} == {"1s"}
