"""Strings from AWS made safe for each output they reach: one function per output.

A thing name, a job id or an error text is whatever an answer held: a lone surrogate
(valid JSON, but no UTF-8 writer can encode it), NUL, any control character. Each output
has its own rules, so each has its own function, and none raises whatever the text:

- `exemplar_label_value`: an OpenMetrics exemplar's label value, within the 128
  characters OpenMetrics allows an exemplar's label names and values in all;
- `url_component`: one path or query component of a link;
- `html_text`: text or an attribute value of an HTML page;
- `json_safe`: a value for `json.dumps`, every string in it encodable as UTF-8.
"""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import quote

from exporter.logs import escape_controls

# OpenMetrics: "The combined length of the label names and values of an Exemplar's
# LabelSet MUST NOT exceed 128 UTF-8 character code points"; a scraper drops a longer one.
EXEMPLAR_CHARACTERS = 128

_SURROGATE = re.compile("[\ud800-\udfff]")


def visible(text: str) -> str:
    """The text with every control, surrogate, bidi, separator and zero-width character
    written as a visible `\\uXXXX`: printable, on one line, encodable as UTF-8."""
    return escape_controls(text)


def exemplar_label_value(text: str, room: int) -> tuple[str, int]:
    """The text as an exemplar label value of at most `room` characters as written in
    the exposition (more than OpenMetrics' unescaped count), escaped; and that length.

    Prometheus refuses a whole scrape whose exemplar holds a NUL, and no exposition can
    be written with a lone surrogate: both, and every other control, become `\\uXXXX`.
    A double quote does too: prometheus_client's parser misreads `\\"` in an exemplar.
    """
    # Cut between characters, never inside a `\\uXXXX`, and counted as written (each
    # backslash twice): Prometheus 2.42 dropped the exemplar of a name of 19 controls
    # that fit only when counted unescaped.
    pieces: list[str] = []
    length = 0
    for char in text:
        piece = visible(char).replace('"', "\\u0022").replace("\\", "\\\\")
        if length + len(piece) > room:
            break
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces), length


def url_component(text: str) -> str:
    """The text as one percent-encoded URL component; a lone surrogate, which has no
    UTF-8 encoding, becomes U+FFFD as a browser would make it."""
    return quote(_SURROGATE.sub("\ufffd", text), safe="")


def html_text(value: object) -> str:
    """A value as HTML text or attribute content: markup escaped, and controls, bidi
    overrides and line separators as visible `\\uXXXX`, as the JSON shows them (a numeric
    reference such as &#x202e; would still reverse the text it precedes)."""
    return visible(html.escape(str(value), quote=True))


def json_safe(value: Any) -> Any:
    """The value with every string in it (keys too) encodable as UTF-8: a lone surrogate
    becomes a visible `\\uXXXX`. `json.dumps` would write it as an escape no strict
    parser accepts (Go's replaces it, others refuse the document)."""
    if isinstance(value, str):
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", value)
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
