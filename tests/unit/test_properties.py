"""Property tests of the parsers of untrusted input: the config file and DescribeJob answers.

Examples are derandomized and no example database is kept, so CI runs the same examples
every time; max_examples keeps the module to a few seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import botocore.session
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter import cli
from exporter.config import CollectorSettings, Config, ConfigError, Jobs, Otel, Target, parse_config
from exporter.model import JobSnapshot, MalformedJob, parse_describe_job
from exporter.store import MetricsStore, escape_label_value
from exporter.table import FAMILIES

FILE = "conf/exporter-config.yaml"
PROFILE = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Strings that exercise label escaping and parsers: quotes, backslashes, newlines, braces,
# commas, equals signs, non-ASCII and astral characters.
NASTY = st.text(
    alphabet=st.sampled_from([*'abcXYZ019 _-:/.,={}"\\\n\t\r#', "é", "日", "🚀", "\u2028"]),
    max_size=30,
)
TEXT = st.one_of(NASTY, st.text(max_size=20))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)


# --- config ----------------------------------------------------------------------------------

# The keys each section accepts are its dataclass's fields: derived, so a new key is
# fuzzed the day it is added.
TOP_KEYS = tuple(f.name for f in dataclasses.fields(Config))
TARGET_KEYS = tuple(f.name for f in dataclasses.fields(Target))
COLLECTOR_KEYS = tuple(f.name for f in dataclasses.fields(CollectorSettings))
OTEL_KEYS = tuple(f.name for f in dataclasses.fields(Otel))
PLAUSIBLE = st.sampled_from(
    [
        "prod",
        "eu-west-1",
        "us-east-1",
        "30s",
        "5m",
        "1h30m",
        "0s",
        "-1s",
        "10",
        10,
        0,
        -3,
        2.5,
        True,
        "http://127.0.0.1:1",
        "arn:aws:iam::123456789012:role/reader",
        "IN_PROGRESS",
        "RUNNING",
        "CONTINUOUS",
        "[unclosed",
        "job-1",
        "job id with spaces",
        "grpc",
        "http/protobuf",
    ]
)


def mapping_of(keys: tuple[str, ...], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    known = st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))
    return st.one_of(known, known.map(lambda d: {**d, "unknown_key": 1}), SCALARS)


LEAF = st.one_of(PLAUSIBLE, SCALARS, st.lists(PLAUSIBLE, max_size=3))
JOBS = mapping_of(
    ("ids", "discover"),
    st.one_of(
        st.lists(st.one_of(PLAUSIBLE, TEXT), max_size=3),
        mapping_of(
            ("status", "target_selection", "thing_group_name", "thing_group_id", "include"),
            LEAF,
        ),
        LEAF,
    ),
)
TARGET = mapping_of(
    TARGET_KEYS,
    st.one_of(LEAF, JOBS, st.dictionaries(st.one_of(NASTY, st.integers()), LEAF, max_size=3)),
)
CONFIG_DATA = st.one_of(
    mapping_of(
        TOP_KEYS,
        st.one_of(
            st.lists(TARGET, max_size=3),
            mapping_of(COLLECTOR_KEYS, LEAF),
            mapping_of(OTEL_KEYS, st.one_of(LEAF, st.dictionaries(NASTY, LEAF, max_size=2))),
            LEAF,
        ),
    ),
    st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    ),
)
YAMLISH = st.text(
    alphabet=st.sampled_from([*"targets:name-{}[]:,'\"&*!|>%@`#\n \t\\0123", "é", "\x00"]),
    max_size=120,
)


def check_config_result(text: str) -> Config | ConfigError:
    try:
        return parse_config(text, FILE)
    except ConfigError as exc:
        assert str(exc).startswith(f"{FILE}: "), str(exc)
        assert exc.file == FILE
        return exc


@PROFILE
@given(YAMLISH)
def test_config_from_arbitrary_text_is_a_config_or_a_config_error(text: str) -> None:
    check_config_result(text)


@PROFILE
@given(CONFIG_DATA)
@example({"": None})  # an empty key must still be named in the error
def test_config_from_arbitrary_data_names_the_field_it_rejects(data: Any) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    result = check_config_result(text)
    if isinstance(result, Config):
        assert result.targets
        return
    # A structural error inside a mapping names where: a field path under the top level.
    if isinstance(data, dict) and data:
        assert result.path, str(result)
        # An empty key is shown quoted, so the path still names it.
        head = result.path.split(".")[0].split("[")[0]
        # A top-level key with a dot in it (`.`, `a.b`) is its own whole path.
        whole = result.path in map(str, data)
        assert whole or head in (*TOP_KEYS, *map(str, data), *map(repr, data)), result


@settings(PROFILE, max_examples=12)
@given(st.one_of(CONFIG_DATA.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), YAMLISH))
def test_check_config_command_exits_0_or_2_with_one_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["check-config", "--config.file", str(path)])
    if code == 0:
        assert out.getvalue().startswith(f"{path}: valid: ")
    else:
        assert code == 2
        assert err.getvalue().startswith(f"error: {path}: ")
        assert err.getvalue().count("\n") == 1, err.getvalue()
        assert "Traceback" not in err.getvalue()


# --- DescribeJob -----------------------------------------------------------------------------

DESCRIBE_JOB = (
    botocore.session.get_session()
    .get_service_model("iot")
    .operation_model("DescribeJob")
    .output_shape
)
WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    TEXT,
    st.just([]),
    st.just({}),
    st.lists(st.integers(), max_size=2),
)
TIMESTAMPS = st.one_of(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
    ),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12))]
        ),
    ),
    st.floats(min_value=-1e12, max_value=1e12),
    st.sampled_from(["2026-01-31T14:30", "0001-01-01T00:00", "9999-12-31T23:59Z", "yesterday"]),
)


def from_shape(shape: Any, wrong: bool, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped like `shape`; with `wrong`, any member may also be of a wrong type."""
    kind = shape.type_name
    if kind == "structure":
        if depth > 4:
            return st.just({})
        members = {
            shape.members[name].serialization.get("name", name): from_shape(m, wrong, depth + 1)
            for name, m in shape.members.items()
        }
        right: st.SearchStrategy[Any] = st.fixed_dictionaries({}, optional=members).map(
            lambda d: {**d, "newField": 1} if len(d) % 5 == 4 else d
        )
    elif kind == "list":
        right = st.lists(from_shape(shape.member, wrong, depth + 1), max_size=4)
    elif kind == "map":
        right = st.dictionaries(TEXT, from_shape(shape.value, wrong, depth + 1), max_size=3)
    elif kind == "string":
        enum = shape.metadata.get("enum")
        # Known values, values AWS may add later, and arbitrary text.
        right = st.one_of(st.sampled_from(enum), st.just("NEW_VALUE"), TEXT) if enum else TEXT
    elif kind in ("integer", "long"):
        right = st.one_of(
            st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=2**1100)
        )
    elif kind in ("double", "float"):
        right = st.floats(allow_nan=False, allow_infinity=False)
    elif kind == "boolean":
        right = st.booleans()
    elif kind == "timestamp":
        right = TIMESTAMPS
    else:
        right = SCALARS
    if not wrong:
        return right
    return st.one_of(right, right, right, right, right, right, right, WRONG)


JOB_SHAPE = DESCRIBE_JOB.members["job"]


def with_id(job: Any, job_id: str) -> Any:
    return {"job": {**job, "jobId": job_id} if isinstance(job, dict) else job}


JOB_IDS = st.one_of(st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True), NASTY.filter(bool))
RESPONSES = st.one_of(
    # Right types (with huge numbers, new enum values and nasty strings): these must parse.
    st.builds(with_id, from_shape(JOB_SHAPE, wrong=False), JOB_IDS),
    # Any member may be of a wrong type, or missing, or the whole response anything.
    st.builds(with_id, from_shape(JOB_SHAPE, wrong=True), JOB_IDS),
    from_shape(DESCRIBE_JOB, wrong=True),
)
TARGET_LABELS = st.dictionaries(
    st.sampled_from(["team", "env", "owner"]), NASTY.filter(bool), max_size=2
)


def render(snapshot: JobSnapshot, job_id: str, labels: dict[str, str]) -> str:
    target = Target(
        name="fleet",
        region="eu-west-1",
        jobs=Jobs(ids=("x",)),
        labels=tuple(sorted(labels.items())),
    )
    store = MetricsStore()
    store.put_job(target, job_id, snapshot)
    return store.body().decode()


@PROFILE
@given(RESPONSES, TARGET_LABELS)
def test_describe_job_parses_or_is_malformed_and_its_exposition_parses(
    response: Any, labels: dict[str, str]
) -> None:
    try:
        snapshot = parse_describe_job(response, 1_767_225_600.0)
    except MalformedJob:
        return
    job_id = snapshot.job_id
    text = render(snapshot, job_id, labels)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The client's parser names a counter family without its `_total`.
    assert set(families) <= {f.name.removesuffix("_total") for f in FAMILIES}
    series: Counter[tuple[str, frozenset[tuple[str, str]]]] = Counter()
    for family in families.values():
        # DescribeJob feeds gauges only; sweeps and events feed the counter and histograms.
        assert family.type == "gauge" or not family.samples
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] += 1
            # Identity and static labels survive escaping exactly.
            assert sample.labels["job_id"] == job_id
            assert sample.labels["target"] == "fleet"
            for name, value in labels.items():
                assert sample.labels[name] == value
            assert not math.isnan(sample.value) or sample.name.endswith("_ratio")
    duplicates = [key for key, n in series.items() if n > 1]
    assert not duplicates, duplicates
    info = families["aws_iot_job_info"].samples[0].labels
    assert info["job_arn"] == (snapshot.job_arn or "")
    assert info["target_selection"] == (snapshot.target_selection or "")
    arns = {s.labels["target_arn"] for s in families.get("aws_iot_job_target_info", _NONE).samples}
    assert arns == set(snapshot.targets)
    if snapshot.status is not None:
        status = {s.labels["status"]: s.value for s in families["aws_iot_job_status"].samples}
        assert status[snapshot.status] == 1
        assert sum(status.values()) == 1


class _NONE:
    samples: list[Any] = []


@PROFILE
@given(st.text(max_size=60))
def test_label_values_round_trip_through_the_text_parser(value: str) -> None:
    text = f'm{{l="{escape_label_value(value)}"}} 1\n'
    (family,) = text_string_to_metric_families(text)
    assert family.samples[0].labels["l"] == value
