"""Generates the Grafana dashboards of the mixin (grafana/dashboards/*.json) with Grafana's SDK.

Usage:
    python grafana/generate.py           # rewrite grafana/dashboards/*.json
    python grafana/generate.py --check   # exit 1 if they are out of date

Selectors, dashboard uids and alert thresholds come from exporter/mixin/mixin.yaml, the
same file the Prometheus rules are generated from, so panels and alerts agree.

Each dashboard is a module of grafana/boards/, one file per dashboard as in node-mixin:
fleet.py, job_detail.py and exporter_health.py, each a `build(Mixin)` returning the SDK's
Dashboard, and lib.py with what they share (the mixin's settings, the query helpers, the
panel kinds, links, layout and variables). This script only writes them.

Dashboards, panels, queries, variables, field colours, thresholds, value mappings, overrides
and panel options are built with the typed builders of `grafana-foundation-sdk` (a test
dependency: the JSON is generated and committed, nothing of this runs in the exporter). The
SDK is pinned to one release in pyproject.toml: its models decide which keys the JSON has and
in which order, so another release can change the output, which `--check` then reports.

Compared with the hand-built dicts the generator used to write, the JSON differs only where the
SDK's models write differently; the panels, titles, queries, units, thresholds, overrides,
links, variables and layout are the same:

- `schemaVersion` is the SDK's (41, Grafana 11.6) rather than 39, and keys come in the
  order of the SDK's models.
- The SDK writes fields the dicts left to Grafana's defaults, with those defaults' values:
  `fiscalYearStartMonth: 0`; `transparent: false` and `repeatDirection: "h"` on panels;
  `justifyMode`, `wideLayout`, `showPercentChange` and `percentChangeColorMode` on stats;
  `footer`, `frameIndex` and `showTypeIcons` on tables; `alignValue` and `perPage` on state
  timelines; `skipUrlSync`, `allowCustomValue`, `auto*` (and `multi`/`includeAll` false on
  the data source) on variables; `icon`, `tooltip` and `targetBlank: false` on links.
- Legends are written out: the SDK's legend model defaults to `showLegend: false`, which
  would hide them, so time series set `showLegend: true` and state timelines get Grafana's
  own default legend and tooltip (list at the bottom; single, unsorted).
- Field data links (a click on a series or a table row) are DashboardLink models in the
  SDK's schema, so they also carry the dashboard-link keys (`type: "link"`, `tags: []`,
  `asDropdown`, `includeVars`, `keepTime`), which Grafana's data links ignore.
- What the SDK has no setter for is left out: variables' `current: {}` (an unset current
  value, as when absent), the data source variable's `options: []` and `refresh: 1`
  (Grafana lists data sources on every load whatever `refresh` says), the single-job
  variable's `allValue: null`, and query variables' `definition`, a display copy of the
  query that Grafana writes back when a dashboard is saved; the query itself is set, as
  `{"query": ..., "refId": ...}`.

Nothing the dashboards need is beyond the SDK. Plain dicts remain only where Grafana's
schema itself leaves a value free-form (`object` in the SDK): the options of the merge and
organize transformations, and a query variable's query object. Panel ids and grid
positions are placed by grafana/boards/lib.py rather than by the SDK (its docstring says
why).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as models

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script from a checkout: the exporter package, and the dashboards beside this file.
sys.path[:0] = [str(ROOT), str(HERE)]

from boards import exporter_health, fleet, job_detail  # noqa: E402
from boards.lib import Mixin  # noqa: E402

from exporter.mixin import generate as rules  # noqa: E402

MIXIN = ROOT / "exporter" / "mixin" / "mixin.yaml"
OUT_DIR = ROOT / "grafana" / "dashboards"


def load_mixin() -> dict[str, Any]:
    return rules.load_config(MIXIN)


def build(config: dict[str, Any]) -> dict[str, models.Dashboard]:
    """File name → dashboard, in the SDK's models."""
    mixin = Mixin(config)
    return {
        "aws-iot-jobs-fleet.json": fleet.build(mixin),
        "aws-iot-job-detail.json": job_detail.build(mixin),
        "aws-iot-jobs-exporter.json": exporter_health.build(mixin),
    }


def render(config: dict[str, Any]) -> dict[str, str]:
    """File name → JSON text of every dashboard, through the SDK's own JSON encoder."""
    return {
        name: json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=False) + "\n"
        for name, board in build(config).items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if dashboards are stale")
    args = parser.parse_args(argv)
    rendered = render(load_mixin())
    if args.check:
        stale = [
            n
            for n, text in rendered.items()
            if not (OUT_DIR / n).exists() or (OUT_DIR / n).read_text(encoding="utf-8") != text
        ]
        if stale:
            print(f"out of date, run grafana/generate.py: {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
