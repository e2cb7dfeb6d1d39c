"""The per-output escaping of strings from AWS, over arbitrary Unicode: lone surrogates,
NUL and every control character included; each result checked by the output's own parser."""

from __future__ import annotations

import json
import unicodedata
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.executions import Exemplar, Histogram
from exporter.safe import EXEMPLAR_CHARACTERS, html_text, json_safe, url_component
from exporter.status import console_url
from exporter.store import _exemplar

PROFILE = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Every code point, surrogates (category Cs) and controls (Cc) included.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=200)
EVERY_CONTROL = "".join(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)])
NASTY = ["\ud800", "bad\udfff", "\x00", EVERY_CONTROL, '"\\\n}', "\u202e" * 130, "é" * 200]


def _openmetrics(thing: str, number: int | None) -> str:
    histogram = Histogram().observe(3.0, Exemplar(thing, number, 3.0, 1_700_000_000.5))
    lines = ["# TYPE t histogram"]
    for le, count, exemplar in histogram.cumulative():
        lines.append(f't_bucket{{le="{le}"}} {count}{_exemplar(exemplar)}')
    lines += [f"t_sum {histogram.total}", f"t_count {histogram.count}", "# EOF", ""]
    return "\n".join(lines)


@PROFILE
@given(thing=ANY_TEXT, number=st.none() | st.integers(0, 2**63 - 1))
@example(thing="a" * 118, number=12345).via("a name that leaves no room for the number")
def test_exemplars_parse_whatever_the_thing_name(thing: str, number: int | None) -> None:
    for name in [thing, *NASTY]:
        text = _openmetrics(name, number)
        text.encode("utf-8")  # no lone surrogate reaches the bytes
        (family,) = text_string_to_metric_families(text)
        exemplars = [s.exemplar for s in family.samples if s.exemplar is not None]
        assert len(exemplars) == 1
        labels = exemplars[0].labels
        assert sum(len(k) + len(v) for k, v in labels.items()) <= EXEMPLAR_CHARACTERS
        value = labels["thing_name"]
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in value)
        shown = name.replace('"', "\\u0022")
        if name.isprintable() and name.isascii() and len(shown) <= 118:
            # A plain name is kept as it is, but for its double quotes (safe.py says why).
            assert value == shown


@PROFILE
@given(region=ANY_TEXT, thing=ANY_TEXT)
def test_console_urls_are_ascii_links_to_the_thing(region: str, thing: str) -> None:
    for name in [thing, *NASTY]:
        url = console_url(region or "eu-west-1", name)
        assert url.isascii() and url.isprintable()
        parts = urlsplit(url)
        assert parts.scheme == "https"
        assert parts.fragment.startswith("/thing/")
        assert "/" not in parts.fragment.removeprefix("/thing/")
        decoded = unquote(parts.fragment.removeprefix("/thing/"), errors="strict")
        if not any("\ud800" <= c <= "\udfff" for c in name):
            assert decoded == name


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text += data


@PROFILE
@given(thing=ANY_TEXT)
def test_html_text_is_one_text_node_of_visible_characters(thing: str) -> None:
    for name in [thing, *NASTY]:
        escaped = html_text(name)
        escaped.encode("utf-8")
        page = _Text()
        page.feed(f'<p title="{escaped}">{escaped}</p>')
        page.close()
        assert page.tags == ["p"]
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in page.text)
        assert not any(c in page.text for c in "\u202e\u2028\u2066\u200b")


@PROFILE
@given(thing=ANY_TEXT)
def test_json_safe_values_parse_back_and_encode_as_utf8(thing: str) -> None:
    for name in [thing, *NASTY]:
        body = json.dumps(json_safe({name: [name, {"k": name}]}), ensure_ascii=True)
        back = json.loads(body)
        json.dumps(back, ensure_ascii=False).encode("utf-8")  # no lone surrogate is left
        if not any("\ud800" <= c <= "\udfff" for c in name):
            assert back == {name: [name, {"k": name}]}  # anything else passes unchanged


def test_url_component_is_ascii_for_a_lone_surrogate() -> None:
    assert url_component("a\ud800/b") == "a%EF%BF%BD%2Fb"
