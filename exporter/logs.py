"""Logging set-up: logfmt and JSON lines, escaped, with secrets and response bodies kept out."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from typing import Any

LEVELS = ("debug", "info", "warn", "error")
# Prometheus' spelling of the level names, in flags and in every line.
_LEVEL_NAMES = {"WARNING": "warn", "CRITICAL": "error"}

# Loggers of the libraries that see request and response bytes: what they log passes
# through `redact` whole, and their exceptions are summarised on one line.
LIBRARIES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "s3transfer")

_FIELD = re.compile(r" ([a-z_]+)=(%[-#0-9.]*[sdirfg])")
_RESERVED_KEYS = frozenset({"ts", "level", "logger", "msg", "exc"})

# Credential values as AWS bodies, headers and botocore's config spell them: XML elements
# (closed or not: a truncated body is exactly what parser errors quote), JSON members and
# key=value pairs.
_SECRET_ELEMENT = re.compile(
    r"(<(?:[\w-]+:)?(?:SecretAccessKey|SessionToken|SecurityToken|Token|Password)\b[^>]*>)"
    r"[^<]*",
    re.IGNORECASE,
)
_SECRET_PAIR = re.compile(
    r"((?:secret_?access_?key|session_?token|security_?token|x-amz-security-token|"
    r"signature|password|authorization)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\"'\s,;&}<]+",
    re.IGNORECASE,
)
# Base64 runs as long as a secret access key (40) or longer (session tokens): only applied
# to text that comes from libraries, never to our own fields, where job ids live.
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
# A body that botocore quotes after its message (`...may succeed:\nb'<Assume...`).
_BYTES_LITERAL = re.compile(r"\bb(['\"]).*", re.DOTALL)
_MAX_MESSAGE = 300

# Characters a terminal or a log pipeline would act on, beyond what JSON escapes itself:
# DEL, C1 controls (CSI among them), zero-width, bidi and line/paragraph separators; and
# lone surrogates (JSON answers can carry them), which no UTF-8 writer can encode.
_UNSAFE_RANGES = r"\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff"
_UNSAFE = re.compile(f"[{_UNSAFE_RANGES}]")
# The same and the C0 controls: what a value printed outside JSON must not carry raw.
_CONTROLS = re.compile(f"[\\x00-\\x1f{_UNSAFE_RANGES}]")
# Printable ASCII but space, ", = and \. Matched whole (fullmatch): `$` would also match
# before a final newline and let "value\n" through bare.
_LOGFMT_PLAIN = re.compile(r"[!#-<>-\[\]-~]+")


_DISPLAY_LIMIT = 300
# Parts of AWS error messages that echo the request: SignatureDoesNotMatch quotes the
# canonical request, whose signed headers include the session token.
_ECHOES = re.compile(r"(canonical string|string-to-sign|stringtosign)", re.IGNORECASE)
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b")
# Secret keys (40 characters) and session tokens are base64; job ids and ARNs have
# hyphens, underscores or colons that break them into shorter runs.
_TOKEN = re.compile(r"[A-Za-z0-9+/=]{40,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def sanitise(message: str) -> str:
    """An error message fit for the status page and the probe: one line, no request echo,
    key ids, credential values or tokens, at most 300 characters."""
    echo = _ECHOES.search(message)
    if echo:
        message = message[: echo.start()].rstrip() + " [request details removed]"
    message = _SECRET_ELEMENT.sub(r"\1<redacted>", message)
    message = _SECRET_PAIR.sub(r"\1<redacted>", message)
    message = _KEY_ID.sub("[key id]", message)
    message = _TOKEN.sub("[redacted]", message)
    message = _CONTROL.sub(" ", message).strip()
    if len(message) > _DISPLAY_LIMIT:
        message = message[: _DISPLAY_LIMIT - 1] + "…"
    return message


def redact(text: str, library: bool = True) -> str:
    """Text with credential values replaced; from a library: one line, bodies dropped."""
    if library:
        text = _BYTES_LITERAL.sub("<body omitted>", text)
        first, _, rest = text.strip().partition("\n")
        text = first + (" <more omitted>" if rest.strip() else "")
    text = _SECRET_ELEMENT.sub(r"\1<redacted>", text)
    text = _SECRET_PAIR.sub(r"\1<redacted>", text)
    if library:
        text = _LONG_TOKEN.sub("<redacted>", text)
        if len(text) > _MAX_MESSAGE:
            text = text[:_MAX_MESSAGE] + "…"
    return text


def _raised_by_library(exc: BaseException) -> bool:
    """Whether the exception, or one it was raised from, comes from code that reads bodies."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__module__.split(".")[0] in LIBRARIES:
            return True
        frames = traceback.extract_tb(current.__traceback__)
        if frames and any(f"/{lib}/" in frames[-1].filename for lib in LIBRARIES):
            return True
        current = current.__cause__ or current.__context__
    return False


def summarise(exc: BaseException) -> str:
    """`Class: message`, the message redacted to one line: safe for any output."""
    message = redact(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class Sanitiser(logging.Filter):
    """Rewrites every record before it is written, whoever logged it.

    botocore's ResponseParserError quotes the whole body it could not parse, an STS
    answer with credentials included, and aiobotocore logs it with a traceback when a
    credential refresh fails. So: exceptions from the libraries become one redacted line,
    other tracebacks are redacted, and library messages are redacted whole.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if _raised_by_library(exc):
                record.exc_text = summarise(exc)
            else:
                formatted = "".join(traceback.format_exception(exc)).rstrip()
                record.exc_text = redact(formatted, library=False)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, library=False)
        from_library = record.name.split(".")[0] in LIBRARIES
        if from_library:
            record.msg = redact(record.getMessage())
            record.args = None
        elif isinstance(record.args, tuple):
            record.args = tuple(
                redact(a, library=False) if isinstance(a, str) else a for a in record.args
            )
        return True


class QuietBadRequests(logging.Filter):
    """aiohttp logs every malformed request with an error-level traceback: one client
    could fill a disk. Bad requests are the client's problem: one debug line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.msg = "bad request refused client=%s error=%s"
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.args = (str(peer), f"{type(exc).__name__}: {redact(str(exc.message))}")
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def event_fields(record: logging.LogRecord) -> tuple[str, list[tuple[str, str]]]:
    """The event and its context as separate keys, for messages written `event key=%s ...`.

    Call sites stay plain `logging` calls whose text reads well anywhere (pytest's caplog
    included); the formatters lift the trailing `key=%s` pairs into fields of their own.
    Any other message is the event whole.
    """
    fmt, args = record.msg, record.args
    if not isinstance(fmt, str) or not isinstance(args, tuple):
        return record.getMessage(), []
    matches = list(_FIELD.finditer(fmt))
    if not matches or len(matches) != len(args) or fmt.count("%") != len(matches):
        return record.getMessage(), []
    start = matches[0].start()
    if fmt[start:] != "".join(m.group(0) for m in matches):
        return record.getMessage(), []
    if any(m.group(1) in _RESERVED_KEYS for m in matches):
        return record.getMessage(), []
    fields = [
        # %r exists for readable quoting in the plain text; a field is quoted by the format.
        (m.group(1), str(arg) if m.group(2) == "%r" else m.group(2) % (arg,))
        for m, arg in zip(matches, args, strict=True)
    ]
    return fmt[:start], fields


def level_name(record: logging.LogRecord) -> str:
    return _LEVEL_NAMES.get(record.levelname, record.levelname.lower())


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return None


def _visible(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def _escape_unsafe(text: str) -> str:
    return _UNSAFE.sub(_visible, text)


def escape_controls(text: str) -> str:
    """Text fit for a terminal or a page, on one line: every control, bidi, separator and
    zero-width character written as a visible `\\uXXXX`, as JSON would spell it."""
    return _CONTROLS.sub(_visible, text)


def logfmt_value(value: str) -> str:
    """A logfmt value: bare when plain ASCII, else quoted with every control escaped."""
    if _LOGFMT_PLAIN.fullmatch(value):
        return value
    return _escape_unsafe(json.dumps(value, ensure_ascii=False))


class LogfmtFormatter(logging.Formatter):
    """One logfmt line per event: time, level, logger, message, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = event_fields(record)
        line = f"ts={_timestamp(record)} level={level_name(record)} "
        line += f"logger={logfmt_value(record.name)} msg={logfmt_value(event)}"
        for key, value in fields:
            line += f" {key}={logfmt_value(value)}"
        exc = _exception_text(self, record)
        if exc:
            line += f" exc={logfmt_value(exc)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per event, its fields as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = event_fields(record)
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": level_name(record),
            "logger": record.name,
            "msg": event,
        }
        entry.update(fields)
        exc = _exception_text(self, record)
        if exc:
            entry["exc"] = exc
        # ASCII-only output escapes every control and non-ASCII character as \uXXXX.
        return json.dumps(entry, ensure_ascii=True)


def setup_logging(level: str, fmt: str) -> None:
    """Root handler on stderr for the exporter and the simulator alike."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(Sanitiser())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    # botocore and aiohttp are chatty at debug and can echo request details; keep them
    # at warning unless asked for explicitly through their own loggers.
    for noisy in ("botocore", "aiobotocore", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, QuietBadRequests)]
    server.addFilter(QuietBadRequests())
