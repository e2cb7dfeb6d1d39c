"""Renders a picture of each dashboard in grafana/dashboards/ into docs/images/<uid>.png.

Usage:
    python grafana/render_previews.py                     # 40 simulated minutes of the demo
    python grafana/render_previews.py --speed 0.1         # the same, 6 times as fast
    python grafana/render_previews.py --prometheus http://127.0.0.1:19090 --minutes 40

Without --prometheus it runs the demo as a user does, `python -m exporter demo` (the demo
scenario simulator/scenarios/demo.yaml, with job events, the exporter, and
Prometheus with the mixin's rules, all on free ports) at `--speed` simulated minutes per
real second, and records `--minutes` simulated minutes of its story from Prometheus' first
scrape. With --prometheus it reads the last `--minutes` (real minutes) of a Prometheus
that scrapes the exporter already, such as the one `make demo` starts. Then it draws every
panel from Prometheus' HTTP API (range queries for graphs, instant queries for stats and
tables), placed by its gridPos in Grafana's dark theme, and stops what it started.

The default speed is the demo's own, real time: rates the exporter measures against the
wall clock (observed rollout rates, events and API calls per second) only compare with the
fleet's configured limits then. A faster demo tells the same story sooner, with those
rates multiplied by the speed-up.

No Grafana is involved: the panels are an approximation of what Grafana draws from the same
queries, units, thresholds, value mappings, overrides and table transformations. Each
picture records in its PNG text chunks how it was made and which panels it drew, where it
drew them (tests/integration/test_docs_match.py compares them with the dashboards). It needs
matplotlib, which the project does not depend on: `pip install matplotlib`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the exporter package

from exporter.demo_stack import (  # noqa: E402
    REAL_TIME,
    SCRAPE_INTERVAL,
    SCRAPE_JOB,
    SHORTEST,
    scaled_seconds,
    time_factor,
)

DASHBOARDS = ROOT / "grafana" / "dashboards"
OUT_DIR = ROOT / "docs" / "images"
# The job the job-detail dashboard shows: the demo's rollout over its abort threshold,
# which fails with reasons, fires AwsIotJobAbortThresholdApproaching throughout and is
# aborted by AWS about 21.5 minutes in, once enough things have executed.
DEFAULT_JOB = "modem-firmware-near-abort"
# Long enough for the README's story: the stalled rollout fires at about minute 35.5.
DEFAULT_MINUTES = 40.0

# Grafana's dark theme.
CANVAS = "#111217"
PANEL_BG = "#181b1f"
BORDER = "#2a2d33"
TEXT = "#ccccdc"
MUTED = "#8e8e99"
GRID = "#2a2d33"
HEADER_BG = "#1f2126"
NAMED_COLORS = {
    "green": "#73bf69",
    "red": "#f2495c",
    "orange": "#ff9830",
    "blue": "#5794f2",
    "purple": "#b877d9",
    "yellow": "#fade2a",
    "text": TEXT,
}
# Grafana's classic palette, in order.
PALETTE = [
    "#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
    "#705da0", "#37872d", "#fade2a", "#447ebc", "#c15c17", "#890f02", "#0a437c",
]  # fmt: skip
# What Grafana applies to a field without thresholds of its own.
DEFAULT_THRESHOLDS = [{"value": None, "color": "green"}, {"value": 80, "color": "red"}]

# Grafana's grid: 24 columns; rows of 30 px plus an 8 px gutter.
WIDTH = 1600
ROW_PX = 38
GAP = 8
HEADER_PX = 84
DPI = 100
PT = 72 / DPI  # points per pixel
CHAR_PX = 0.6  # average glyph width over font size in pixels, for truncation
BOLD_CHAR_PX = 0.68


# Running the demo -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def wait_until(what: str, ready: Any, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while not ready():
        if time.monotonic() > end:
            raise SystemExit(f"error: timed out waiting for {what}")
        time.sleep(0.5)


def scrape_interval(speed: float) -> float:
    """The scrape interval of the demo's Prometheus at `speed` (exporter/demo_stack.py)."""
    return float(max(SHORTEST, round(scaled_seconds(SCRAPE_INTERVAL, time_factor(speed)))))


@contextmanager
def demo(speed: float, minutes: float) -> Iterator[tuple[str, float]]:
    """`python -m exporter demo` on free ports; yields its Prometheus' URL and when it first
    scraped, once `minutes` simulated minutes have passed since."""
    if not shutil.which("prometheus"):
        raise SystemExit(
            "error: prometheus not found on PATH (apt-get install prometheus; the demo starts it)"
        )
    exporter_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    argv = [
        sys.executable,
        "-m",
        "exporter",
        "demo",
        f"--speed={speed!r}",
        "--simulator.listen-address=127.0.0.1:0",
        f"--web.listen-address=127.0.0.1:{exporter_port}",
        f"--prometheus.listen-address=127.0.0.1:{prometheus_port}",
        f"--alertmanager.listen-address=127.0.0.1:{alertmanager_port}",
    ]
    with tempfile.TemporaryDirectory(prefix="render-previews-") as tmp:
        log_path = Path(tmp) / "demo.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            try:
                wait_until("the demo's Prometheus", lambda: http_ok(f"{prometheus}/-/ready"))
                wait_until("a scrape", lambda: instant(prometheus, f'up{{job="{SCRAPE_JOB}"}}'))
            except SystemExit:
                print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            began = time.time()
            seconds = minutes * 60 / time_factor(speed)
            print(
                f"recording {minutes:g} simulated minutes of the demo at --speed {speed:g}:"
                f" {seconds:.0f} s",
                file=sys.stderr,
            )
            time.sleep(seconds)
            if process.poll() is not None:
                print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise SystemExit(f"error: the demo exited early ({process.returncode})")
            yield prometheus, began
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the demo stops its Prometheus itself
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# Prometheus -----------------------------------------------------------------------------


def api(prometheus: str, path: str, **params: Any) -> Any:
    url = f"{prometheus}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def instant(prometheus: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": expr} if at is None else {"query": expr, "time": at}
    result: list[dict[str, Any]] = api(prometheus, "/api/v1/query", **params)["result"]
    return result


@dataclass
class Source:
    """Prometheus over the dashboard's time range, with Grafana's variables set."""

    url: str
    start: float
    end: float
    step: float
    variables: dict[str, str]

    def expr(self, expr: str) -> str:
        for name in sorted(self.variables, key=len, reverse=True):
            expr = expr.replace(name, self.variables[name])
        if "$" in expr:
            raise ValueError(f"unknown Grafana variable in {expr!r}")
        return expr

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return instant(self.url, self.expr(expr), self.end)

    def range(self, expr: str) -> list[dict[str, Any]]:
        params = {"start": self.start, "end": self.end, "step": self.step}
        data = api(self.url, "/api/v1/query_range", query=self.expr(expr), **params)
        result: list[dict[str, Any]] = data["result"]
        return result


# Grafana's field config -----------------------------------------------------------------


def legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt in ("", "__auto"):
        name = labels.get("__name__", "")
        rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{name}{{{rest}}}" if rest else name or "Value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def field_config(panel: dict[str, Any], name: str, ref: str | None = None) -> dict[str, Any]:
    """The panel's defaults with the overrides that match a field's name (or its query's
    refId) applied."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    config = {**defaults, "custom": dict(defaults.get("custom", {}))}
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override["matcher"]
        hit = (
            (matcher["id"] == "byName" and matcher["options"] == name)
            or (matcher["id"] == "byRegexp" and re.search(matcher["options"], name))
            or (matcher["id"] == "byFrameRefID" and matcher["options"] == ref)
        )
        if not hit:
            continue
        for prop in override["properties"]:
            if prop["id"].startswith("custom."):
                config["custom"][prop["id"][len("custom.") :]] = prop["value"]
            else:
                config[prop["id"]] = prop["value"]
    return config


def color(name: str | None) -> str | None:
    if not name or name == "transparent":
        return None
    return NAMED_COLORS.get(name, name)


def threshold_color(value: float, config: dict[str, Any]) -> str:
    """The field's colour for a value: its fixed colour, or else its thresholds' (Grafana's
    default thresholds when it has none)."""
    mode = config.get("color", {})
    if mode.get("mode") == "fixed":
        return color(mode.get("fixedColor")) or TEXT
    steps = config.get("thresholds", {}).get("steps", DEFAULT_THRESHOLDS)
    chosen = steps[0]["color"]
    for step in steps:
        if step["value"] is None or value >= step["value"]:
            chosen = step["color"]
    return color(chosen) or TEXT


def mapped(value: float, config: dict[str, Any]) -> tuple[str, str] | None:
    """The text and color a value mapping gives the value, if any."""
    key = str(int(value)) if float(value).is_integer() else str(value)
    for mapping in config.get("mappings", []):
        if mapping["type"] == "value" and key in mapping["options"]:
            option = mapping["options"][key]
            return option.get("text", key), color(option.get("color")) or TEXT
    return None


def display(value: float, config: dict[str, Any]) -> tuple[str, str]:
    """What Grafana shows for a value: text and color."""
    found = mapped(value, config)
    if found:
        return found
    return fmt_value(value, config.get("unit", "short")), threshold_color(value, config)


def fmt_number(value: float, decimals: int | None = None) -> str:
    if math.isnan(value):
        return "NaN"
    if decimals is None:
        magnitude = math.floor(math.log10(abs(value))) if value else 0
        decimals = max(0, min(3, 2 - magnitude))
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def fmt_value(value: float, unit: str) -> str:
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if unit == "percentunit":
        return f"{fmt_number(value * 100)}%"
    if unit == "s":
        size = abs(value)
        for limit, divisor, suffix in (
            (1, 0.001, "ms"),
            (60, 1, "s"),
            (3600, 60, "min"),
            (86400, 3600, "hour"),
            (604800, 86400, "day"),
            (math.inf, 604800, "week"),
        ):
            if size < limit:
                return f"{fmt_number(value / divisor)} {suffix}"
    if unit == "dateTimeAsIso":
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if unit == "reqps":
        return f"{fmt_value(value, 'short')} req/s"
    if unit.startswith("suffix:"):
        return f"{fmt_value(value, 'short')} {unit[len('suffix:') :].strip()}"
    if unit == "none":
        return fmt_number(value)
    if unit == "bool_yes_no":
        return "Yes" if value else "No"
    for scale, suffix in ((1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if abs(value) >= scale:
            return f"{fmt_number(value / scale)}{suffix}"
    return fmt_number(value)


def fit(text: str, width_px: float, font_px: float) -> str:
    """Cuts text to about width_px, with an ellipsis, as Grafana's cells and legends do."""
    room = int(width_px / (font_px * CHAR_PX))
    if len(text) <= room:
        return text
    return text[: max(room - 1, 1)] + "…"


# Drawing ---------------------------------------------------------------------------------


@dataclass
class Canvas:
    fig: Figure
    width: float
    height: float

    def axes(self, x: float, y: float, w: float, h: float) -> Axes:
        """An axes at a pixel rectangle measured from the top left."""
        return self.fig.add_axes(
            (x / self.width, 1 - (y + h) / self.height, w / self.width, h / self.height)
        )

    def box(self, x: float, y: float, w: float, h: float) -> Axes:
        """An undecorated axes whose data coordinates are pixels, y downwards."""
        ax = self.axes(x, y, w, h)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.axis("off")
        return ax


def text(ax: Axes, x: float, y: float, s: str, px: float, **kwargs: Any) -> None:
    kwargs.setdefault("color", TEXT)
    kwargs.setdefault("va", "center")
    ax.text(x, y, s, fontsize=px * PT, clip_on=True, **kwargs)


def no_data(ax: Axes, w: float, h: float) -> None:
    text(ax, w / 2, h / 2, "No data", 14, color=MUTED, ha="center")


def draw_stat(canvas: Canvas, panel: dict[str, Any], source: Source, rect: Rect) -> bool:
    x, y, w, h = rect
    items = []
    for target in panel["targets"]:
        series = source.instant(target["expr"])
        names = [legend(target.get("legendFormat", ""), s["metric"]) for s in series]
        for name, s in sorted(zip(names, series, strict=True), key=lambda pair: pair[0]):
            config = field_config(panel, name, target.get("refId"))
            items.append((name, float(s["value"][1]), config))
    ax = canvas.box(x, y, w, h)
    if not items:
        no_data(ax, w, h)
        return False
    row = h / len(items)
    for i, (name, value, config) in enumerate(items):
        shown, tint = display(value, config)
        middle = i * row + row / 2
        # Grafana sizes the value to its room and gives the name what is left.
        value_px = min(row * 0.7, 40.0, w * 0.6 / (len(shown) * BOLD_CHAR_PX))
        name_px = min(max(row * 0.4, 10.0), 14.0)
        # Capitals are wider than the average glyph.
        glyph = BOLD_CHAR_PX + (0.12 if shown.isupper() else 0.0)
        value_room = len(shown) * value_px * glyph
        text(ax, 6, middle, fit(name, w - value_room - 24, name_px), name_px)
        text(ax, w - 6, middle, shown, value_px, color=tint, ha="right", weight="bold")
    return True


def series_matrix(
    panel: dict[str, Any], source: Source
) -> tuple[list[float], list[tuple[str, list[float], dict[str, Any]]]]:
    """Every series of the panel's range queries on one time grid (NaN where none)."""
    count = round((source.end - source.start) / source.step) + 1
    times = [source.start + i * source.step for i in range(count)]
    rows = []
    for target in panel["targets"]:
        for s in source.range(target["expr"]):
            values = [math.nan] * count
            for stamp, value in s["values"]:
                index = round((float(stamp) - source.start) / source.step)
                if 0 <= index < count:
                    values[index] = float(value)
            name = legend(target.get("legendFormat", ""), s["metric"])
            rows.append((name, values, field_config(panel, name, target.get("refId"))))
    return times, rows


def time_axis(ax: Axes, times: list[float], px: float) -> None:
    import matplotlib.dates as mdates

    ax.set_xlim(times[0] / 86400, times[-1] / 86400)
    # matplotlib.dates, unlike matplotlib.ticker, comes without type stubs.
    # As many times as fit side by side, at about 80 px each, as Grafana spaces them.
    ticks = max(3, min(7, int(ax.bbox.width // 80)))
    locator = mdates.AutoDateLocator(minticks=3, maxticks=ticks)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    # Grafana shows seconds on ranges of a few minutes, minutes beyond.
    short = times[-1] - times[0] <= 5 * 60
    formatter = mdates.DateFormatter("%H:%M:%S" if short else "%H:%M")  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(formatter)
    ax.tick_params(axis="x", colors=MUTED, labelsize=px * PT, length=0, pad=6)


def style_axes(ax: Axes) -> None:
    ax.set_facecolor(PANEL_BG)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)


def on_right(config: dict[str, Any]) -> bool:
    return bool(config.get("custom", {}).get("axisPlacement") == "right")


def y_axis(lines: list[list[float]], unit: str, px: float) -> tuple[float, float, Any, float]:
    """A value axis for the lines: its range from zero (or below) to a little above the
    highest value, its tick locator, and the width its tick labels take."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    plotted = [v for line in lines for v in line if not math.isnan(v)]
    low, high = (min(plotted), max(plotted)) if plotted else (0.0, 1.0)
    low = min(low, 0.0)
    if high == low:
        high = low + (abs(low) or 1.0)
    high += (high - low) * 0.08
    locator: Any = FixedLocator([0, 1]) if unit == "bool_yes_no" else MaxNLocator(nbins=4)
    ticks = [t for t in locator.tick_values(low, high) if low <= t <= high]
    width = max((len(fmt_value(t, unit)) for t in ticks), default=1) * px * CHAR_PX + 14
    return low, high, locator, width


def draw_timeseries(canvas: Canvas, panel: dict[str, Any], source: Source, rect: Rect) -> bool:
    from matplotlib.ticker import FuncFormatter

    x, y, w, h = rect
    times, rows = series_matrix(panel, source)
    if not rows:
        no_data(canvas.box(x, y, w, h), w, h)
        return False
    defaults = field_config(panel, "")
    unit = defaults.get("unit", "short")
    custom = defaults.get("custom", {})
    stacked = custom.get("stacking", {}).get("mode", "none") == "normal"
    fill = custom.get("fillOpacity", 0) / 100

    # Series with axisPlacement "right" get their own axis, in their own unit.
    right = [on_right(cfg) for _, _, cfg in rows]
    right_unit = next((row[2].get("unit", unit) for row in rows if on_right(row[2])), None)

    # What each series draws: its line, and the band under it (the stack below, or zero).
    drawn = []
    base = [0.0] * len(times)
    for (_, values, _), is_right in zip(rows, right, strict=True):
        present = [not math.isnan(v) for v in values]
        if stacked and not is_right:
            top = [b + v if p else b for b, v, p in zip(base, values, present, strict=True)]
            line = [t if p else math.nan for t, p in zip(top, present, strict=True)]
            drawn.append((line, base, present))
            base = top
        else:
            drawn.append((values, [0.0] * len(times), present))
    tick_font = 10.0
    low, high, locator, axis_w = y_axis(
        [line for (line, _, _), r in zip(drawn, right, strict=True) if not r], unit, tick_font
    )
    if right_unit is not None:
        lines = [line for (line, _, _), r in zip(drawn, right, strict=True) if r]
        right_axis = y_axis(lines, right_unit, tick_font)
        right_w = right_axis[3]
    else:
        right_w = 0.0

    legend_font = 11.0
    last = [next((v for v in reversed(vals) if not math.isnan(v)), math.nan) for _, vals, _ in rows]
    last_text = [
        fmt_value(v, cfg.get("unit", unit)) for v, (_, _, cfg) in zip(last, rows, strict=True)
    ]
    longest = max(len(name) for name, _, _ in rows)
    value_w = max(max(len(t) for t in last_text), 6) * legend_font * CHAR_PX + 12
    legend_w = min(max(longest * legend_font * CHAR_PX + value_w + 30, 150), w * 0.45)

    axis_h = 20
    plot_w = w - legend_w - axis_w - right_w - 12
    ax = canvas.axes(x + axis_w, y + 4, plot_w, h - axis_h - 4)
    style_axes(ax)
    other = None
    if right_unit is not None:
        other = ax.twinx()
        for spine in other.spines.values():
            spine.set_visible(False)
        r_low, r_high, r_locator, _ = right_axis
        other.set_ylim(r_low, r_high)
        other.yaxis.set_major_locator(r_locator)
        other.yaxis.set_major_formatter(
            FuncFormatter(lambda v, _pos: fmt_value(v, right_unit or "short"))
        )
        other.tick_params(axis="y", colors=MUTED, labelsize=tick_font * PT, length=0)
    xs = [t / 86400 for t in times]
    for i, ((_, _, config), (line, under, present)) in enumerate(zip(rows, drawn, strict=True)):
        tint = PALETTE[i % len(PALETTE)]
        dashed = config.get("custom", {}).get("lineStyle", {}).get("fill") == "dash"
        target = other if right[i] and other is not None else ax
        if fill:
            target.fill_between(xs, under, line, where=present, color=tint, alpha=fill, lw=0)
        target.plot(xs, line, color=tint, linewidth=1.2, linestyle=(0, (6, 4)) if dashed else "-")
    ax.set_ylim(low, high)
    # Grafana draws thresholds as dashed lines without widening the axis to show them.
    if custom.get("thresholdsStyle", {}).get("mode") == "dashed":
        for step in defaults.get("thresholds", {}).get("steps", []):
            step_color = color(step["color"])
            if step_color and step["value"] is not None and low <= step["value"] <= high:
                ax.axhline(step["value"], color=step_color, linestyle=(0, (6, 4)), linewidth=1)
    ax.yaxis.set_major_locator(locator)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_value(v, unit)))
    ax.tick_params(axis="y", colors=MUTED, labelsize=tick_font * PT, length=0)
    time_axis(ax, times, tick_font)

    box = canvas.box(x + w - legend_w, y, legend_w, h)
    row_h = 19.0
    text(box, legend_w - 6, 8, "Last *", legend_font, color=MUTED, ha="right")
    for i, ((name, _, _), shown) in enumerate(zip(rows, last_text, strict=True)):
        middle = 8 + (i + 1) * row_h
        if middle > h - 6:
            break
        tint = PALETTE[i % len(PALETTE)]
        box.plot([4, 16], [middle, middle], color=tint, linewidth=3, solid_capstyle="round")
        text(box, 22, middle, fit(name, legend_w - value_w - 26, legend_font), legend_font)
        text(box, legend_w - 6, middle, shown, legend_font, ha="right")
    return True


def draw_state_timeline(canvas: Canvas, panel: dict[str, Any], source: Source, rect: Rect) -> bool:
    x, y, w, h = rect
    times, rows = series_matrix(panel, source)
    if not rows:
        no_data(canvas.box(x, y, w, h), w, h)
        return False
    defaults = field_config(panel, "")
    show_values = panel.get("options", {}).get("showValue", "auto") != "never"
    font = 12.0
    label_w = min(max(len(name) for name, _, _ in rows) * font * CHAR_PX + 16, w * 0.3)
    legend_h, axis_h = 22, 18
    plot_w = w - label_w - 8
    ax = canvas.axes(x + label_w, y, plot_w, h - legend_h - axis_h)
    ax.set_facecolor(PANEL_BG)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_yticks([])
    ax.set_ylim(len(rows), 0)
    seconds_per_px = (times[-1] - times[0]) / plot_w
    labels = canvas.box(x, y, label_w, h - legend_h - axis_h)
    row_px = (h - legend_h - axis_h) / len(rows)
    for r, (name, values, config) in enumerate(rows):
        text(
            labels, label_w - 8, (r + 0.5) * row_px, fit(name, label_w - 12, font), font, ha="right"
        )
        i = 0
        while i < len(values):
            if math.isnan(values[i]):
                i += 1
                continue
            j = i
            while j + 1 < len(values) and values[j + 1] == values[i]:
                j += 1
            begin = times[i]
            end = times[j + 1] if j + 1 < len(times) else times[j] + source.step
            shown, tint = display(values[i], config)
            ax.broken_barh(
                [(begin / 86400, (end - begin) / 86400)],
                (r + 0.1, 0.8),
                facecolors=tint,
                edgecolors=PANEL_BG,
                alpha=0.85,
            )
            if show_values and (end - begin) / seconds_per_px > len(shown) * font * CHAR_PX + 8:
                ax.text(
                    (begin + end) / 2 / 86400,
                    r + 0.5,
                    shown,
                    ha="center",
                    va="center",
                    fontsize=font * PT,
                    color="#000000",
                    clip_on=True,
                )
            i = j + 1
    time_axis(ax, times, 10)
    # The legend lists the value mappings, as Grafana's does.
    key = canvas.box(x, y + h - legend_h, w, legend_h)
    at = 8.0
    for mapping in defaults.get("mappings", []):
        for option in sorted(mapping["options"].values(), key=lambda o: o.get("index", 0)):
            tint = color(option.get("color")) or TEXT
            key.add_patch(_rect(at, legend_h / 2 - 5, 14, 10, tint))
            text(key, at + 20, legend_h / 2, option["text"], 11)
            at += 20 + len(option["text"]) * 11 * CHAR_PX + 18
    return True


def draw_heatmap(canvas: Canvas, panel: dict[str, Any], source: Source, rect: Rect) -> bool:
    """Grafana's heatmap of cumulative `le` buckets (query format "heatmap"): one row per
    bucket, upper bound at its edge, each cell its cumulative count less the one below;
    empty cells left out, the scheme's colours on the panel's exponential scale."""
    from matplotlib import colormaps
    from matplotlib.colors import PowerNorm, to_hex

    x, y, w, h = rect
    times, rows = series_matrix(panel, source)
    if not rows:
        no_data(canvas.box(x, y, w, h), w, h)
        return False
    options = panel.get("options", {})
    buckets = sorted(rows, key=lambda r: float(r[0]))  # the legend is the bound: 300, +Inf
    cells: list[list[float]] = []
    below = [0.0] * len(times)
    for _, values, _ in buckets:
        cells.append(
            [
                v - b if not math.isnan(v) and v - b > 1e-9 else math.nan
                for v, b in zip(values, below, strict=True)
            ]
        )
        below = [b if math.isnan(v) else v for v, b in zip(values, below, strict=True)]
    present = [c for line in cells for c in line if not math.isnan(c)]
    y_unit = options.get("yAxis", {}).get("unit", "short")
    bounds = [fmt_value(float(name), y_unit) for name, _, _ in buckets]
    tick_font, scale_h, axis_h = 10.0, 22, 20
    axis_w = max(len(b) for b in bounds) * tick_font * CHAR_PX + 14
    ax = canvas.axes(x + axis_w, y + 4, w - axis_w - 8, h - axis_h - scale_h - 4)
    style_axes(ax)
    ax.grid(False)
    # Grafana turns its single-hue schemes around on the dark theme: few is dark, many light.
    scheme = options.get("color", {}).get("scheme", "Oranges")
    cmap = colormaps[scheme if options.get("color", {}).get("reverse") else f"{scheme}_r"].copy()
    cmap.set_bad(alpha=0)
    top = max(present, default=1.0)
    norm = PowerNorm(gamma=options.get("color", {}).get("exponent", 0.5), vmin=0, vmax=top)
    edges = [t / 86400 for t in times] + [(times[-1] + source.step) / 86400]
    ax.pcolormesh(edges, list(range(len(buckets) + 1)), cells, cmap=cmap, norm=norm)
    ax.set_ylim(0, len(buckets))
    # Each row's upper bound at its top edge, as Grafana's "le" layout labels them.
    ax.set_yticks([i + 1 for i in range(len(buckets))], bounds)
    ax.tick_params(axis="y", colors=MUTED, labelsize=tick_font * PT, length=0)
    time_axis(ax, times, tick_font)
    # The colour scale under the cells, from 0 to the highest count.
    scale = canvas.box(x, y + h - scale_h, w, scale_h)
    steps = 32
    for i in range(steps):
        tint = to_hex(cmap(norm(top * (i + 0.5) / steps)))
        scale.add_patch(_rect(axis_w + i * 6, scale_h / 2 - 5, 6, 10, tint))
    text(scale, axis_w - 6, scale_h / 2, "0", 11, ha="right")
    text(scale, axis_w + steps * 6 + 6, scale_h / 2, fmt_value(top, "short"), 11)
    return bool(present)


def _rect(x: float, y: float, w: float, h: float, face: str, edge: str | None = None) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=face, edgecolor=edge or face, linewidth=1)


def table_frames(panel: dict[str, Any], source: Source) -> list[list[dict[str, Any]]]:
    """One frame (list of rows) per query, as Grafana's Prometheus table format makes them:
    Time, the labels sorted by name (with __name__), and `Value` or `Value #<refId>`."""
    frames = []
    targets = panel["targets"]
    for target in targets:
        series = source.instant(target["expr"])
        if not series:
            continue
        value_name = f"Value #{target['refId']}" if len(targets) > 1 else "Value"
        labels = sorted({k for s in series for k in s["metric"]})
        frames.append(
            [
                {
                    "Time": float(s["value"][0]),
                    **{k: s["metric"].get(k, "") for k in labels},
                    value_name: float(s["value"][1]),
                }
                for s in series
            ]
        )
    return frames


def merge(frames: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Grafana's merge transformation: rows agreeing on the fields every frame has join."""
    if len(frames) <= 1:
        return frames[0] if frames else []
    keys = [k for k in frames[0][0] if all(k in f[0] for f in frames[1:])]
    merged: list[dict[str, Any]] = []
    for frame in frames:
        for row in frame:
            for existing in merged:
                if all(existing.get(k) == row.get(k) for k in keys) and all(
                    existing.get(k) in (None, v) for k, v in row.items()
                ):
                    existing.update(row)
                    break
            else:
                merged.append(dict(row))
    return merged


def sort_key(column: str) -> Callable[[dict[str, Any]], Any]:
    """A table sort on one column, rows without a value last when descending."""
    return lambda row: row.get(column, -math.inf)


def draw_table(canvas: Canvas, panel: dict[str, Any], source: Source, rect: Rect) -> bool:
    x, y, w, h = rect
    frames = table_frames(panel, source)
    transformations = {t["id"]: t.get("options", {}) for t in panel.get("transformations", [])}
    if "merge" in transformations:
        rows = merge(frames)
    else:
        rows = [row for frame in frames for row in frame]
    ax = canvas.box(x, y, w, h)
    if not rows:
        no_data(ax, w, h)
        return False
    excluded = transformations.get("organize", {}).get("excludeByName", {})
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    columns = []
    for name in names:
        config = field_config(panel, name)
        if excluded.get(name) or config.get("custom", {}).get("hidden"):
            continue
        columns.append((name, config.get("displayName", name), config))
    for sort in panel.get("options", {}).get("sortBy", []):
        for name, shown, _ in columns:
            if shown == sort["displayName"]:
                rows.sort(key=sort_key(name), reverse=sort["desc"])

    font, row_h = 12.0, 32.0
    col_w = max(w / len(columns), 150.0)  # Grafana's columns share the width, down to a minimum
    ax.add_patch(_rect(0, 0, w, row_h, HEADER_BG))
    for c, (_, shown, _) in enumerate(columns):
        text(
            ax,
            c * col_w + 8,
            row_h / 2,
            fit(shown, col_w - 14, font),
            font,
            color=TEXT,
            weight="bold",
        )
    for r, row in enumerate(rows):
        top = (r + 1) * row_h
        if top + row_h > h + 4:
            break
        ax.plot([0, w], [top, top], color=BORDER, linewidth=1)
        for c, (name, _, config) in enumerate(columns):
            value = row.get(name)
            left, middle = c * col_w + 8, top + row_h / 2
            if value is None or value == "":
                continue
            if isinstance(value, str):
                text(ax, left, middle, fit(value, col_w - 14, font), font)
                continue
            shown, tint = display(value, config)
            cell = config.get("custom", {}).get("cellOptions", {}).get("type", "auto")
            if cell == "gauge":
                low, high = config.get("min", 0), config.get("max", 1)
                share = min(max((value - low) / ((high - low) or 1), 0.0), 1.0)
                bar_w = col_w - 16 - 52
                ax.add_patch(_rect(left, middle - 6, bar_w, 12, "#22252b"))
                ax.add_patch(_rect(left, middle - 6, bar_w * share, 12, tint))
                text(ax, left + bar_w + 6, middle, shown, font, color=tint)
            elif cell == "color-text":
                text(ax, left, middle, fit(shown, col_w - 14, font), font, color=tint)
            else:
                text(ax, left, middle, fit(shown, col_w - 14, font), font)
    return True


Rect = tuple[float, float, float, float]
DRAW = {
    "stat": draw_stat,
    "timeseries": draw_timeseries,
    "state-timeline": draw_state_timeline,
    "table": draw_table,
    "heatmap": draw_heatmap,
}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def span_text(seconds: float) -> str:
    """A time range as Grafana's picker names it: seconds, minutes or hours."""
    if seconds < 120:
        return f"{round(seconds)} s"
    if seconds < 2 * 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.3g} h"


@dataclass
class Drawn:
    """What a picture shows: the figure, and every panel with whether it had data."""

    figure: Figure
    panels: list[dict[str, Any]]


def render(board: dict[str, Any], source: Source, variables: dict[str, str], note: str) -> Drawn:
    """The dashboard as Grafana lays it out; `note` says under the time range what the
    data is."""
    import matplotlib.pyplot as plt

    every = list(panels(board))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in every)
    height = HEADER_PX + rows * ROW_PX
    fig = plt.figure(figsize=(WIDTH / DPI, height / DPI), dpi=DPI, facecolor=CANVAS)
    canvas = Canvas(fig, WIDTH, height)
    column = (WIDTH - GAP) / 24

    head = canvas.box(0, 0, WIDTH, HEADER_PX)
    text(head, GAP + 4, 22, board["title"], 20, weight="bold")
    span = span_text(source.end - source.start)
    when = datetime.fromtimestamp(source.end, UTC).strftime("%Y-%m-%d %H:%M:%S")
    text(head, WIDTH - GAP - 4, 22, f"Last {span} to {when} UTC", 13, color=MUTED, ha="right")
    text(head, WIDTH - GAP - 4, 60, note, 13, color=MUTED, ha="right")
    at = GAP + 4.0
    for label, value in variables.items():
        label_w = len(label) * 13 * CHAR_PX + 16
        value_w = len(value) * 13 * CHAR_PX + 24
        head.add_patch(_rect(at, 46, label_w, 28, HEADER_BG, BORDER))
        text(head, at + 8, 60, label, 13)
        head.add_patch(_rect(at + label_w, 46, value_w, 28, CANVAS, BORDER))
        text(head, at + label_w + 10, 60, value, 13)
        at += label_w + value_w + 10

    drawn = []
    for panel in every:
        grid = panel["gridPos"]
        record = {"title": panel["title"], "type": panel["type"], "gridPos": grid}
        drawn.append(record)
        px, py = GAP + grid["x"] * column, HEADER_PX + grid["y"] * ROW_PX
        pw, ph = grid["w"] * column - GAP, grid["h"] * ROW_PX - GAP
        if panel["type"] == "row":
            text(canvas.box(px, py, pw, ph + GAP), 4, (ph + GAP) / 2, f"⌄  {panel['title']}", 15,
                 weight="bold")  # fmt: skip
            continue
        frame = canvas.box(px, py, pw, ph)
        frame.add_patch(_rect(0.5, 0.5, pw - 1, ph - 1, PANEL_BG, BORDER))
        text(frame, 10, 16, panel["title"], 14, weight="bold")
        body: Rect = (px + 8, py + 32, pw - 16, ph - 38)
        draw = DRAW.get(panel["type"])
        if draw is None:
            text(frame, pw / 2, ph / 2, f"({panel['type']} panel)", 13, color=MUTED, ha="center")
            record["data"] = False
        else:
            record["data"] = draw(canvas, panel, source, body)
    return Drawn(fig, drawn)


def rate_interval(step: float, scrape: float) -> str:
    """Grafana's $__rate_interval: max($__interval + scrape interval, 4 * scrape interval)."""
    return f"{int(max(step + scrape, 4 * scrape))}s"


def speed_text(speed: float) -> str:
    if math.isclose(speed, REAL_TIME):
        return "real time"
    return f"{time_factor(speed):g}x real time"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        help="time range to show: simulated minutes of the demo, or with --prometheus the"
        " last real minutes (default: %(default)g)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=REAL_TIME,
        help="the demo's speed, simulated minutes per real second (default: real time, 1/60)",
    )
    parser.add_argument("--job", default=DEFAULT_JOB, help="job of the job-detail dashboard")
    parser.add_argument("--prometheus", help="render from this Prometheus, start nothing")
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=None,
        help="for $__rate_interval (default: the demo's at its speed; 15 with --prometheus)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if not (math.isfinite(args.speed) and args.speed >= REAL_TIME):
        parser.error("--speed: expected real time (1/60) or faster")
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print(
            "error: matplotlib is needed to render the previews and is not a dependency of the"
            " project; install it with `pip install matplotlib` (in the venv:"
            " `.venv/bin/pip install matplotlib`)",
            file=sys.stderr,
        )
        return 1
    import matplotlib.pyplot as plt

    command = shlex.join(["python", "grafana/render_previews.py", *sys.argv[1:]])
    with ExitStack() as stack:
        if args.prometheus:
            scrape = args.scrape_interval or 15.0
            seconds = args.minutes * 60
            url, began = args.prometheus.rstrip("/"), time.time() - seconds
            data = f"Prometheus at {url}"
            note = f"from {url}"
        else:
            scrape = args.scrape_interval or scrape_interval(args.speed)
            seconds = args.minutes * 60 / time_factor(args.speed)
            url, began = stack.enter_context(demo(args.speed, args.minutes))
            data = (
                f"the Prometheus of `python -m exporter demo --speed {args.speed!r}` (the demo"
                f" scenario with job events, at {speed_text(args.speed)}),"
                f" {args.minutes:g} simulated minutes from its first scrape"
            )
            note = (
                f"demo with job events at {speed_text(args.speed)}: {args.minutes:g} simulated min"
            )
        end = time.time()
        start = max(began, end - seconds)
        # Grafana's $__interval: the range over about as many points as the panel has
        # pixels, never below the scrape interval.
        step = max(scrape, round((end - start) / 300))
        window = " to ".join(
            datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in (start, end)
        )
        args.out.mkdir(parents=True, exist_ok=True)
        for path in sorted(DASHBOARDS.glob("*.json")):
            board = json.loads(path.read_text())
            uid = board["uid"]
            values = {"target": ".*", "region": ".*", "job_id": ".*"}
            shown = {
                "Data source": "Prometheus",
                "Target": "All",
                "Region": "All",
                "Job": "All",
            }
            if any(v["name"] == "job_id" and not v.get("includeAll") for v in _vars(board)):
                values["job_id"] = args.job
                shown["Job"] = args.job
            variables = {f"${k}": v for k, v in values.items()}
            variables |= {
                "$__rate_interval": rate_interval(step, scrape),
                "$__interval": f"{int(step)}s",
                "$__range": f"{round(end - start)}s",
            }
            source = Source(url, start, end, step, variables)
            drawn = render(board, source, shown, note)
            out = args.out / f"{uid}.png"
            # Read by tests/integration/test_docs_match.py (PNG text chunks, no matplotlib needed).
            metadata = {
                "Title": board["title"],
                "Description": "An approximation of the Grafana dashboard drawn without"
                f" Grafana, from {data}; window {window}, step {step:g} s.",
                "Software": "grafana/render_previews.py",
                "Command": command,
                "Dashboard": uid,
                "Panels": json.dumps(drawn.panels, separators=(",", ":")),
            }
            drawn.figure.savefig(out, dpi=DPI, facecolor=CANVAS, metadata=metadata)
            plt.close(drawn.figure)
            empty = [p["title"] for p in drawn.panels if p["type"] != "row" and not p["data"]]
            where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
            print(f"wrote {where}; no data: {', '.join(empty) or 'none'}")
    return 0


def _vars(board: dict[str, Any]) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = board.get("templating", {}).get("list", [])
    return variables


if __name__ == "__main__":
    sys.exit(main())
