"""Generates the Grafana dashboards of the mixin (grafana/dashboards/*.json) from plain dicts.

Usage:
    python grafana/generate.py           # rewrite grafana/dashboards/*.json
    python grafana/generate.py --check   # exit 1 if they are out of date

Selectors, dashboard uids and alert thresholds come from config/prometheus/mixin.yaml, the
same file the Prometheus rules are generated from, so panels and alerts agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MIXIN = ROOT / "config" / "prometheus" / "mixin.yaml"
OUT_DIR = ROOT / "grafana" / "dashboards"

TAG = "aws-iot-jobs"
DS = {"type": "prometheus", "uid": "${datasource}"}
# One row per job in a Grafana grid of 24 columns.
WIDTH = 24
# The labels that identify a job, as in the rules' joins.
JOB_KEY = "target, region, account_id, job_id"
RATE_PER_MINUTE = "suffix: executions/min"
# Grafana's date units take milliseconds; the exporter's timestamps are seconds.
MS = " * 1000"
# Statuses in which the exporter describes a job every interval, as in the data-stale alert.
ACTIVE = 'status=~"IN_PROGRESS|SCHEDULED"'
# The colour of a value that is neither good nor bad. Without a colour of its own a stat or
# table field falls back on Grafana's default thresholds (red from 80), which would paint
# counts, durations and timestamps red; every such field gets this fixed colour instead.
NEUTRAL = "text"

Panel = dict[str, Any]


def load_mixin() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(MIXIN.read_text(encoding="utf-8"))
    return data


# Links ------------------------------------------------------------------------------
# Grafana exposes a series' labels as ${__field.labels.x} in graphs, and a table row's
# columns as ${__data.fields.x}; job links are built for both.


def console_link(ref: str) -> dict[str, Any]:
    region, job_id = ref.format("region"), ref.format("job_id")
    return {
        "title": "Open job in the AWS IoT console",
        "url": (f"https://{region}.console.aws.amazon.com/iot/home?region={region}#/job/{job_id}"),
        "targetBlank": True,
    }


def job_dashboard_link(uid: str, ref: str) -> dict[str, Any]:
    return {
        "title": "Job detail",
        "url": (
            f"/d/{uid}?var-target={ref.format('target')}&var-region={ref.format('region')}"
            f"&var-job_id={ref.format('job_id')}&${{datasource:queryparam}}&${{__url_time_range}}"
        ),
    }


SERIES = "${{__field.labels.{}}}"
ROW = "${{__data.fields.{}}}"


# Panels -----------------------------------------------------------------------------


def query(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Panel:
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "instant": instant or table,
        "range": not (instant or table),
        "format": "table" if table else "time_series",
    }


def threshold_steps(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def fixed(color: str) -> dict[str, str]:
    return {"mode": "fixed", "fixedColor": color}


def by_thresholds(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    """Field properties that colour a column by thresholds, whatever the panel's default."""
    return {"color": {"mode": "thresholds"}, "thresholds": threshold_steps(steps)}


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[Panel],
    unit: str,
    *,
    w: int = 12,
    h: int = 8,
    links: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
    color: str | None = None,
    minmax: tuple[float | None, float | None] = (None, None),
    transformations: list[dict[str, Any]] | None = None,
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit}
    if links:
        defaults["links"] = links
    if custom:
        defaults["custom"] = custom
    if mappings:
        defaults["mappings"] = mappings
    if thresholds and color:
        raise ValueError(f"{title}: a colour comes from thresholds or is fixed, not both")
    if thresholds:
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = threshold_steps(thresholds)
    elif color:
        defaults["color"] = fixed(color)
    if minmax[0] is not None:
        defaults["min"] = minmax[0]
    if minmax[1] is not None:
        defaults["max"] = minmax[1]
    for ref, target in zip("ABCDEFGH", targets, strict=False):
        target["refId"] = ref
    result: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        "gridPos": {"w": w, "h": h},
    }
    if transformations:
        result["transformations"] = transformations
    return result


def timeseries(
    title: str,
    description: str,
    targets: list[Panel],
    unit: str,
    *,
    stack: bool = False,
    threshold_line: float | None = None,
    **kwargs: Any,
) -> Panel:
    custom: dict[str, Any] = {"fillOpacity": 20 if stack else 0, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    thresholds = None
    if threshold_line is not None:
        custom["thresholdsStyle"] = {"mode": "dashed"}
        thresholds = [(None, "transparent"), (threshold_line, "red")]
    return panel(
        "timeseries",
        title,
        description,
        targets,
        unit,
        custom=custom,
        thresholds=thresholds,
        options={
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **kwargs,
    )


def stat(title: str, description: str, targets: list[Panel], unit: str, **kwargs: Any) -> Panel:
    """A stat; its values are neutral unless it is given thresholds with a meaning."""
    kwargs.setdefault("w", 6)
    kwargs.setdefault("h", 5)
    if not kwargs.get("thresholds"):
        kwargs.setdefault("color", NEUTRAL)
    return panel(
        "stat",
        title,
        description,
        targets,
        unit,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name",
            "colorMode": "value",
            "graphMode": "none",
            "orientation": "horizontal",
        },
        **kwargs,
    )


def table(
    title: str,
    description: str,
    targets: list[Panel],
    unit: str,
    *,
    columns: dict[str, dict[str, Any]],
    hide: Iterable[str] = ("Time", "job", "account_id", "__name__"),
    sort: str | None = None,
    **kwargs: Any,
) -> Panel:
    """A table of instant queries merged on their labels; `columns` names value columns.

    Grafana's merge joins rows whose shared columns agree, and a table-format query has a
    column per label, the metric name (__name__) included. Queries of one table must
    therefore return no metric name (per_job() and aggregations drop it), or rows of
    different queries never join. Columns are neutral unless `columns` colours them.
    """
    if not kwargs.get("thresholds"):
        kwargs.setdefault("color", NEUTRAL)
    overrides = []
    for column, props in columns.items():
        properties = [{"id": k, "value": v} for k, v in props.items()]
        overrides.append({"matcher": {"id": "byName", "options": column}, "properties": properties})
    options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm"}
    if sort:
        options["sortBy"] = [{"displayName": sort, "desc": True}]
    kwargs.setdefault("w", WIDTH)
    return panel(
        "table",
        title,
        description,
        [{**t, "format": "table", "instant": True, "range": False} for t in targets],
        unit,
        overrides=overrides,
        options=options,
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": dict.fromkeys(hide, True)}},
        ],
        **kwargs,
    )


def row(title: str) -> Panel:
    # Rows hold no data, so they have neither queries nor a unit.
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24}}


def layout(panels: list[Panel]) -> list[Panel]:
    """Places panels left to right, wrapping at the grid width; ids in order."""
    x = y = line_height = 0
    for index, p in enumerate(panels, start=1):
        p["id"] = index
        w = p["gridPos"]["w"]
        h = p["gridPos"].get("h", 1)
        if p["type"] == "row" or x + w > WIDTH:
            x, y, line_height = 0, y + line_height, 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x += w
        line_height = max(line_height, h)
        if p["type"] == "row":
            x, y, line_height = 0, y + h, 0
    return panels


# Variables --------------------------------------------------------------------------


def datasource_variable() -> dict[str, Any]:
    return {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def query_variable(name: str, label: str, definition: str, *, multi: bool = True) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": definition,
        "query": {"query": definition, "refId": f"{name}-variable"},
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        # .* instead of a long alternation of every value when All is selected.
        "allValue": ".*" if multi else None,
        "current": {},
        "hide": 0,
        "options": [],
        "regex": "",
    }


def job_variables(sel: str, *, single_job: bool = False) -> list[dict[str, Any]]:
    return [
        datasource_variable(),
        query_variable("target", "Target", f"label_values(aws_iot_job_info{{{sel}}}, target)"),
        query_variable(
            "region",
            "Region",
            f'label_values(aws_iot_job_info{{{sel}, target=~"$target"}}, region)',
        ),
        query_variable(
            "job_id",
            "Job",
            "label_values(aws_iot_job_info"
            f'{{{sel}, target=~"$target", region=~"$region"}}, job_id)',
            multi=not single_job,
        ),
    ]


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Panel],
    variables: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "links": [
            {
                "type": "dashboards",
                "title": "AWS IoT Jobs",
                "tags": [TAG],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": layout(panels),
    }


# Dashboards -------------------------------------------------------------------------


class Mixin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.c = config
        self.sel = config["exporter_selector"]
        self.replicas = ", ".join(config["replica_labels"])
        self.uids = config["dashboard_uids"]
        # Every job query filters on the dashboard's variables.
        self.f = f'{self.sel}, target=~"$target", region=~"$region", job_id=~"$job_id"'
        self.series_links = [
            console_link(SERIES),
            job_dashboard_link(self.uids["job"], SERIES),
        ]
        self.row_links = [console_link(ROW), job_dashboard_link(self.uids["job"], ROW)]

    def dedup(self, metric: str, extra: str = "") -> str:
        matchers = ", ".join(m for m in (self.f, extra) if m)
        return f"max without ({self.replicas}) ({metric}{{{matchers}}})"

    @staticmethod
    def per_job(expr: str) -> str:
        """One series per job, labelled with the job's identity only and no metric name, so
        that the rows of a table's queries are the same and merge into one row per job."""
        return f"max by ({JOB_KEY}) (\n  {expr}\n)"

    def in_progress(self, expr: str) -> str:
        status = self.dedup("aws_iot_job_status", 'status="IN_PROGRESS"')
        return f"{expr} and on ({JOB_KEY}) ({status} == 1)"

    def status_code(self) -> str:
        # One series per job whose value names its status, so a state timeline draws one
        # row per job; value mappings turn the codes back into names.
        parts = []
        for code, name in STATUS_CODES:
            matcher = 'status="' + name + '"'
            parts.append(f"({self.dedup('aws_iot_job_status', matcher)} == 1) * {code}")
        return f"max by ({JOB_KEY}) (\n  " + "\n  or ".join(parts) + "\n)"

    def status_mappings(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "value",
                "options": {
                    str(code): {"text": name, "color": color, "index": i}
                    for i, (code, name, color) in enumerate(
                        (code, name, STATUS_COLORS[name]) for code, name in STATUS_CODES
                    )
                },
            }
        ]

    # Fleet overview -----------------------------------------------------------------

    def fleet(self) -> dict[str, Any]:
        alerts = self.c["alerts"]
        executions = self.dedup("aws_iot_job_executions")
        failure = f"aws_iot_job:executions_failure:ratio{{{self.f}}}"
        failure_steps = [(None, "green"), (alerts["failure_ratio_high"]["threshold"], "red")]
        failure_column = {
            "displayName": "Failure ratio",
            "custom.cellOptions": {"type": "color-text"},
            **by_thresholds(failure_steps),
        }
        panels = [
            row("Now"),
            stat(
                "Jobs by status",
                "Jobs the exporter follows, by their current status.",
                [
                    query(
                        f"count by (status) ({self.dedup('aws_iot_job_status')} == 1)",
                        "{{status}}",
                        instant=True,
                    )
                ],
                "short",
                # The status colours of the job-detail dashboard's timeline.
                overrides=[
                    {
                        "matcher": {"id": "byName", "options": name},
                        "properties": [{"id": "color", "value": fixed(STATUS_COLORS[name])}],
                    }
                    for _, name in STATUS_CODES
                ],
                w=8,
            ),
            stat(
                "Executions by state",
                "Executions of the selected jobs, by state. Failed and timed-out count "
                "attempts when a job retries.",
                [query(f"sum by (state) ({executions})", "{{state}}", instant=True)],
                "short",
                w=10,
            ),
            stat(
                "Fleet failure ratio",
                "Failed, timed-out and rejected executions over all finished executions "
                "of the selected jobs.",
                [
                    query(
                        f"sum(aws_iot_job:executions_failed:sum{{{self.f}}})\n"
                        f"/ (sum(aws_iot_job:executions_terminal:sum{{{self.f}}}) > 0)",
                        "failure ratio",
                        instant=True,
                    )
                ],
                "percentunit",
                w=6,
                thresholds=failure_steps,
            ),
            row("Rollouts"),
            table(
                "Active rollouts",
                "Jobs IN_PROGRESS: share of executions no longer queued or in progress, "
                "failure ratio, pending executions and observed rollout rate (retries "
                "included). Progress stays empty while the job has no executions, and the "
                "failure ratio while none has finished. Click a row for the AWS IoT console "
                "or the job-detail dashboard.",
                [
                    query(self.per_job(self.in_progress(expr)))
                    for expr in (
                        f"aws_iot_job:executions_completion:ratio{{{self.f}}}",
                        failure,
                        f"aws_iot_job:executions_pending:sum{{{self.f}}}",
                        f"aws_iot_job:rollout_observed_rate_per_minute:avg_over_time{{{self.f}}}",
                    )
                ],
                "percentunit",
                columns={
                    "Value #A": {
                        "displayName": "Progress",
                        "custom.cellOptions": {"type": "gauge", "mode": "basic"},
                        "color": fixed("blue"),
                        "min": 0,
                        "max": 1,
                    },
                    "Value #B": failure_column,
                    "Value #C": {"displayName": "Queued or in progress", "unit": "short"},
                    "Value #D": {"displayName": "Rollout rate", "unit": RATE_PER_MINUTE},
                },
                sort="Progress",
                links=self.row_links,
                h=9,
            ),
            table(
                "Top jobs by failure ratio",
                "The ten selected jobs with the highest failure ratio, whatever their status, "
                "with the number of finished executions the ratio is taken over.",
                [
                    query(self.per_job(f"topk(10, {failure})")),
                    query(
                        self.per_job(
                            f"aws_iot_job:executions_terminal:sum{{{self.f}}}\n"
                            f"  and on ({JOB_KEY}) topk(10, {failure})"
                        )
                    ),
                ],
                "percentunit",
                columns={
                    "Value #A": failure_column,
                    "Value #B": {"displayName": "Finished executions", "unit": "short"},
                },
                sort="Failure ratio",
                links=self.row_links,
                w=12,
                h=9,
            ),
            table(
                "Firing alerts",
                "Alerts of this mixin that are pending or firing (Prometheus' ALERTS series).",
                [query('ALERTS{alertname=~"AwsIotJob.*", target=~"$target"}')],
                "none",
                columns={"Value": {"custom.hidden": True}},
                hide=("Time", "__name__", "job", "account_id"),
                links=self.row_links,
                w=12,
                h=9,
            ),
            timeseries(
                "Failure ratio of active rollouts",
                "Failure ratio of every IN_PROGRESS job over time; the dashed line is the "
                "AwsIotJobFailureRatioHigh threshold.",
                [query(self.in_progress(failure), "{{target}} {{job_id}}")],
                "percentunit",
                threshold_line=alerts["failure_ratio_high"]["threshold"],
                links=self.series_links,
            ),
            timeseries(
                "Observed rollout rate",
                "Executions created per minute, averaged, per target and region.",
                [
                    query(
                        "sum by (target, region) ("
                        f"aws_iot_job:rollout_observed_rate_per_minute:avg_over_time{{{self.f}}})",
                        "{{target}} {{region}}",
                    )
                ],
                RATE_PER_MINUTE,
            ),
            timeseries(
                "Executions by state across the fleet",
                "Executions of the selected jobs by state, stacked.",
                [query(f"sum by (state) ({executions})", "{{state}}")],
                "short",
                stack=True,
            ),
            timeseries(
                "Jobs by status over time",
                "Number of jobs in each status, stacked.",
                [
                    query(
                        f"count by (status) ({self.dedup('aws_iot_job_status')} == 1)", "{{status}}"
                    )
                ],
                "short",
                stack=True,
            ),
        ]
        return dashboard(
            self.uids["fleet"],
            "AWS IoT Jobs / Fleet overview",
            "Every AWS IoT job the exporter follows: statuses, executions, active rollouts, "
            "the worst failure ratios and firing alerts.",
            panels,
            job_variables(self.sel),
        )

    # Job detail ---------------------------------------------------------------------

    def job(self) -> dict[str, Any]:
        alerts = self.c["alerts"]
        f = self.f
        age = f"(time() - {self.dedup('aws_iot_job_last_success_timestamp_seconds')})"
        active = self.dedup("aws_iot_job_status", ACTIVE)
        inactive = self.dedup("aws_iot_job_status", ACTIVE.replace("=~", "!~"))
        panels = [
            row("Job"),
            stat(
                "Status",
                "Current status of the job.",
                [query(self.status_code(), "{{job_id}}", instant=True)],
                "none",
                mappings=self.status_mappings(),
                links=self.series_links,
                w=6,
            ),
            stat(
                "Progress",
                "Share of the job's executions no longer queued or in progress.",
                [
                    query(
                        f"aws_iot_job:executions_completion:ratio{{{f}}}",
                        "{{job_id}}",
                        instant=True,
                    )
                ],
                "percentunit",
                links=self.series_links,
                w=6,
            ),
            stat(
                "Failure ratio",
                "Failed, timed-out and rejected executions over finished executions.",
                [query(f"aws_iot_job:executions_failure:ratio{{{f}}}", "{{job_id}}", instant=True)],
                "percentunit",
                thresholds=[(None, "green"), (alerts["failure_ratio_high"]["threshold"], "red")],
                links=self.series_links,
                w=6,
            ),
            stat(
                "Data age",
                "Time since the exporter last described the job; red from the "
                f"AwsIotJobsExporterDataStale limit ({alerts['data_stale']['max_age']}) while "
                "the job is scheduled or in progress. Completed and canceled jobs are "
                "described once, so their age grows on purpose and is shown with their "
                "status, uncoloured.",
                [
                    query(f"{age}\nand on ({JOB_KEY}) ({active} == 1)", "{{job_id}}", instant=True),
                    query(
                        f"{age}\n* on ({JOB_KEY}) group_left (status) ({inactive} == 1)",
                        "{{job_id}} ({{status}})",
                        instant=True,
                    ),
                ],
                "s",
                thresholds=[(None, "green"), (_seconds(alerts["data_stale"]["max_age"]), "red")],
                overrides=[
                    {
                        "matcher": {"id": "byFrameRefID", "options": "B"},
                        "properties": [{"id": "color", "value": fixed(NEUTRAL)}],
                    }
                ],
                w=6,
            ),
            panel(
                "state-timeline",
                "Status timeline",
                "The job's status over time.",
                [query(self.status_code(), "{{target}} {{job_id}}")],
                "none",
                mappings=self.status_mappings(),
                links=self.series_links,
                options={"showValue": "auto", "mergeValues": True, "rowHeight": 0.8},
                w=WIDTH,
                h=5,
            ),
            row("Executions"),
            timeseries(
                "Executions by state",
                "The job's executions by state, stacked. With retries, failed and timed-out "
                "count attempts.",
                [
                    query(
                        f"sum by ({JOB_KEY}, state) ({self.dedup('aws_iot_job_executions')})",
                        "{{state}}",
                    )
                ],
                "short",
                stack=True,
                links=self.series_links,
            ),
            timeseries(
                "Observed vs allowed rollout rate",
                "Executions created per minute (as measured between describes, and "
                "averaged) against the rate the rollout config allows now and its maximum. "
                "The observed rate counts every execution created, retries included, while "
                "the limit applies to first notifications only: with a retry config the "
                "observed rate can exceed the limit.",
                [
                    query(
                        f"aws_iot_job:rollout_observed_rate_per_minute:avg_over_time{{{f}}}",
                        "observed incl. retries (avg)",
                    ),
                    query(
                        self.dedup("aws_iot_job_rollout_observed_rate_per_minute"),
                        "observed incl. retries",
                    ),
                    query(self.dedup("aws_iot_job_rollout_rate_limit_per_minute"), "allowed now"),
                    query(self.dedup("aws_iot_job_rollout_maximum_per_minute"), "maximum"),
                ],
                RATE_PER_MINUTE,
                links=self.series_links,
            ),
            timeseries(
                "Failure ratio against abort threshold",
                "Failure ratio per failure type and, dashed, the abort threshold of each of "
                "the job's abort criteria; AWS cancels the job when a ratio reaches its "
                "threshold. The red line is the AwsIotJobFailureRatioHigh threshold.",
                [
                    query(
                        f"aws_iot_job_failure_type:executions_failure:ratio{{{f}}}",
                        "{{failure_type}} failure ratio",
                    ),
                    query(
                        self.dedup("aws_iot_job_abort_threshold_ratio"),
                        "{{failure_type}} abort threshold",
                    ),
                ],
                "percentunit",
                threshold_line=alerts["failure_ratio_high"]["threshold"],
                overrides=[
                    {
                        "matcher": {"id": "byRegexp", "options": ".*abort threshold"},
                        "properties": [
                            {
                                "id": "custom.lineStyle",
                                "value": {"fill": "dash", "dash": [10, 10]},
                            }
                        ],
                    }
                ],
                links=self.series_links,
            ),
            timeseries(
                "Abort threshold used",
                "Failure ratio of each abort criterion over its threshold: 100% means AWS "
                "aborts once enough things have executed. The line is the "
                "AwsIotJobAbortThresholdApproaching level.",
                [
                    query(
                        f"aws_iot_job_failure_type:abort_threshold_usage:ratio{{{f}}}",
                        "{{failure_type}}",
                    )
                ],
                "percentunit",
                threshold_line=alerts["abort_threshold_approaching"]["usage"],
                links=self.series_links,
            ),
            timeseries(
                "Why executions fail",
                "Failed, rejected and timed-out execution events per minute by the reason "
                "the devices report (statusDetails[events.reason_key]), stacked. Only for "
                "targets with job events (docs/events.md); `other` gathers the reasons past "
                "events.max_reasons_per_job.",
                [
                    query(
                        f"sum by ({JOB_KEY}, status, reason) (\n"
                        "  max without ("
                        f"{self.replicas}) (rate(aws_iot_job_execution_events_total"
                        f"{{{f}}}[$__rate_interval]))\n"
                        ") * 60",
                        "{{status}} {{reason}}",
                    )
                ],
                RATE_PER_MINUTE,
                stack=True,
                links=self.series_links,
            ),
            row("Configuration"),
            stat(
                "Timeouts and retries",
                "In-progress timeout, retries allowed per failure type, and the executed "
                "things each abort criterion waits for.",
                [
                    query(
                        self.dedup("aws_iot_job_in_progress_timeout_seconds"),
                        "in-progress timeout",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_retry_max_attempts"),
                        "retries on {{failure_type}}",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_abort_min_executed_things"),
                        "abort after executions ({{failure_type}})",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_presigned_url_expiry_seconds"),
                        "pre-signed URL expiry",
                        instant=True,
                    ),
                ],
                "short",
                overrides=[
                    {
                        "matcher": {"id": "byRegexp", "options": ".*(timeout|expiry)"},
                        "properties": [{"id": "unit", "value": "s"}],
                    }
                ],
                w=8,
                h=7,
            ),
            stat(
                "Scheduling windows",
                "Scheduled start and end of the rollout, date-time maintenance windows and "
                "the next maintenance-window rollouts AWS has planned.",
                [
                    query(
                        self.dedup("aws_iot_job_scheduling_start_timestamp_seconds") + MS,
                        "start",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_scheduling_end_timestamp_seconds") + MS,
                        "end",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_scheduled_rollout_start_timestamp_seconds") + MS,
                        "rollout {{rollout}}",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_maintenance_window_start_timestamp_seconds") + MS,
                        "window {{window}}",
                        instant=True,
                    ),
                ],
                "dateTimeAsIso",
                w=8,
                h=7,
            ),
            table(
                "Maintenance windows and end behavior",
                "Recurring maintenance windows (the API's expression as is) with their "
                "length, and what AWS does at the scheduled end.",
                [
                    query(
                        self.dedup("aws_iot_job_maintenance_window_duration_seconds")
                        + f"\n* on ({JOB_KEY}, window) group_left (start_time) "
                        + self.dedup("aws_iot_job_maintenance_window_info")
                    ),
                    query(self.dedup("aws_iot_job_scheduling_end_behavior")),
                ],
                "s",
                columns={
                    "Value #A": {"displayName": "Duration"},
                    "Value #B": {"custom.hidden": True},
                },
                links=self.row_links,
                w=8,
                h=7,
            ),
            table(
                "Job info",
                "Metadata of the job: targets, target selection, namespace, template, "
                "software package versions and reason code (set on cancel or update).",
                [
                    query(self.dedup("aws_iot_job_info")),
                    query(self.dedup("aws_iot_job_target_info")),
                    query(self.dedup("aws_iot_job_reason_info")),
                    query(self.dedup("aws_iot_job_destination_package_version_info")),
                ],
                "none",
                columns={
                    "Value #A": {"custom.hidden": True},
                    "Value #B": {"custom.hidden": True},
                    "Value #C": {"custom.hidden": True},
                    "Value #D": {"custom.hidden": True},
                },
                links=self.row_links,
                h=6,
            ),
            stat(
                "Timestamps",
                "When the job was created, last updated and completed.",
                [
                    query(
                        self.dedup("aws_iot_job_created_timestamp_seconds") + MS,
                        "created",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_last_updated_timestamp_seconds") + MS,
                        "last updated",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_completed_timestamp_seconds") + MS,
                        "completed",
                        instant=True,
                    ),
                ],
                "dateTimeAsIso",
                w=8,
            ),
            stat(
                "Exponential rollout",
                "The exponential rollout config: starting rate, factor, and the notified or "
                "succeeded things that trigger each increase.",
                [
                    query(
                        self.dedup("aws_iot_job_rollout_exponential_base_rate_per_minute"),
                        "base rate per minute",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_rollout_exponential_increment_factor"),
                        "increment factor",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_rollout_exponential_notified_things_threshold"),
                        "increase every notified",
                        instant=True,
                    ),
                    query(
                        self.dedup("aws_iot_job_rollout_exponential_succeeded_things_threshold"),
                        "increase every succeeded",
                        instant=True,
                    ),
                ],
                "short",
                w=8,
            ),
            stat(
                "Rollout state",
                "Targets still being rolled out to, whether AWS is rolling out or canceling "
                "(isConcurrent), and whether the job was force-canceled.",
                [
                    query(
                        self.dedup("aws_iot_job_processing_targets"),
                        "processing targets",
                        instant=True,
                    ),
                    query(self.dedup("aws_iot_job_is_concurrent"), "concurrent", instant=True),
                    query(self.dedup("aws_iot_job_force_canceled"), "force-canceled", instant=True),
                ],
                "short",
                w=8,
            ),
        ]
        # Every panel here shows series of the selected job: all link to it.
        for p in panels:
            if p["type"] != "row":
                p["fieldConfig"]["defaults"].setdefault("links", self.series_links)
        return dashboard(
            self.uids["job"],
            "AWS IoT Jobs / Job detail",
            "One AWS IoT job: status over time, executions, rollout rate, failure ratio "
            "against the abort threshold, timeouts, retries and scheduling.",
            panels,
            job_variables(self.sel, single_job=True),
        )

    # Exporter -----------------------------------------------------------------------

    def exporter(self) -> dict[str, Any]:
        alerts = self.c["alerts"]
        t = f'{self.sel}, target=~"$target"'
        requests = f"aws_iot_jobs_exporter_api_requests_total{{{t}}}"
        throttled = f'aws_iot_jobs_exporter_api_requests_total{{{t}, outcome="throttled"}}'
        buckets = f"aws_iot_jobs_exporter_api_request_duration_seconds_bucket{{{t}}}"
        latency = [
            query(
                f"histogram_quantile({q}, sum by (le, operation) "
                f"(rate({buckets}[$__rate_interval])))",
                f"p{int(q * 100)} {{{{operation}}}}",
            )
            for q in (0.5, 0.9, 0.99)
        ]
        up_mapping = [
            {
                "type": "value",
                "options": {
                    "0": {"text": "down", "color": "red", "index": 0},
                    "1": {"text": "up", "color": "green", "index": 1},
                },
            }
        ]
        success_mapping = [
            {
                "type": "value",
                "options": {
                    "0": {"text": "failed", "color": "red", "index": 0},
                    "1": {"text": "ok", "color": "green", "index": 1},
                },
            }
        ]
        panels = [
            row("Health"),
            stat(
                "Exporters up",
                "Whether Prometheus can scrape each exporter replica.",
                [query(f"up{{{self.sel}}}", "{{instance}}", instant=True)],
                "none",
                mappings=up_mapping,
            ),
            stat(
                "Jobs tracked",
                "Jobs followed: active (described every interval), frozen (terminal, kept "
                "until retention ends), pending (not described yet).",
                [
                    query(
                        f"sum by (state) (aws_iot_jobs_exporter_jobs_tracked{{{t}}})",
                        "{{state}}",
                        instant=True,
                    )
                ],
                "short",
            ),
            stat(
                "Jobs missing",
                "Job ids listed in the config that AWS does not know.",
                [
                    query(
                        f"sum by (target) (aws_iot_jobs_exporter_jobs_missing{{{t}}})",
                        "{{target}}",
                        instant=True,
                    )
                ],
                "short",
                thresholds=[(None, "green"), (1, "orange")],
            ),
            stat(
                "Config reload",
                "Whether the last configuration load succeeded.",
                [
                    query(
                        f"aws_iot_jobs_exporter_config_last_reload_successful{{{self.sel}}}",
                        "{{instance}}",
                        instant=True,
                    )
                ],
                "none",
                mappings=success_mapping,
            ),
            panel(
                "state-timeline",
                "Collection success",
                "Whether the last collection cycle of each target described every job it "
                "meant to. AwsIotJobsExporterCollectionFailing fires after "
                f"{alerts['collection_failing']['for']} of failures.",
                [
                    query(
                        f"aws_iot_jobs_exporter_collection_success{{{t}}}",
                        "{{target}} {{instance}}",
                    )
                ],
                "none",
                mappings=success_mapping,
                options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
                w=WIDTH,
                h=5,
            ),
            row("AWS API"),
            timeseries(
                "API requests by outcome",
                "AWS API attempts per second by outcome; botocore's retries count each attempt.",
                [query(f"sum by (outcome) (rate({requests}[$__rate_interval]))", "{{outcome}}")],
                "reqps",
                stack=True,
            ),
            timeseries(
                "Throttling",
                "Share of attempts answered with ThrottlingException, per target; the line "
                "is the AwsIotJobsExporterThrottled threshold.",
                [
                    query(
                        f"sum by (target) (rate({throttled}[$__rate_interval]))\n"
                        f"/ (sum by (target) (rate({requests}[$__rate_interval])) > 0)",
                        "{{target}}",
                    )
                ],
                "percentunit",
                threshold_line=alerts["throttled"]["threshold"],
            ),
            timeseries(
                "Request latency",
                "Duration of API calls, retries included: median, 90th and 99th percentile "
                "per operation.",
                latency,
                "s",
            ),
            timeseries(
                "API requests by operation",
                "Attempts per second per target and operation, against the request budget.",
                [
                    query(
                        f"sum by (target, operation) (rate({requests}[$__rate_interval]))",
                        "{{target}} {{operation}}",
                    )
                ],
                "reqps",
            ),
            row("Collection"),
            timeseries(
                "Collection cycle time",
                "Wall time of the last collection cycle per target. A cycle longer than the "
                "collector interval means the request budget is too small for the jobs.",
                [
                    query(
                        f"aws_iot_jobs_exporter_collection_duration_seconds{{{t}}}",
                        "{{target}} {{instance}}",
                    )
                ],
                "s",
            ),
            timeseries(
                "Data age",
                "Time since the last successful collection cycle and discovery, and the age "
                "of the oldest active job's data; the line is the "
                "AwsIotJobsExporterDataStale limit.",
                [
                    query(
                        "time() - aws_iot_jobs_exporter_last_collection_success_timestamp_seconds"
                        f"{{{t}}}",
                        "last good cycle {{target}}",
                    ),
                    query(
                        "time() - aws_iot_jobs_exporter_discovery_last_success_timestamp_seconds"
                        f"{{{t}}}",
                        "last discovery {{target}}",
                    ),
                    query(
                        f"max by (target) (\n"
                        f"  time() - aws_iot_job_last_success_timestamp_seconds{{{self.f}}}\n"
                        f"  and on ({JOB_KEY}, {self.replicas}) "
                        f"(aws_iot_job_status{{{self.f}, {ACTIVE}}} == 1)\n"
                        ")",
                        "oldest active job {{target}}",
                    ),
                ],
                "s",
                threshold_line=_seconds(alerts["data_stale"]["max_age"]),
            ),
            timeseries(
                "Job events",
                "Targets with job events (docs/events.md): how late events arrive (p50 and "
                "p99 of the time from AWS publishing to the exporter reading), and whether "
                "events drive the target (1) or it is polled every interval (0).",
                [
                    query(
                        "histogram_quantile(0.5, sum by (target, le) (rate("
                        f"aws_iot_jobs_exporter_events_lag_seconds_bucket{{{t}}}"
                        "[$__rate_interval])))",
                        "lag p50 {{target}}",
                    ),
                    query(
                        "histogram_quantile(0.99, sum by (target, le) (rate("
                        f"aws_iot_jobs_exporter_events_lag_seconds_bucket{{{t}}}"
                        "[$__rate_interval])))",
                        "lag p99 {{target}}",
                    ),
                    query(
                        f"max by (target) (aws_iot_jobs_exporter_events_driven{{{t}}})",
                        "event-driven {{target}}",
                    ),
                ],
                "s",
                overrides=[
                    {
                        "matcher": {"id": "byRegexp", "options": "event-driven.*"},
                        "properties": [
                            {"id": "unit", "value": "bool_yes_no"},
                            {"id": "custom.axisPlacement", "value": "right"},
                        ],
                    }
                ],
            ),
            timeseries(
                "Jobs tracked over time",
                "Jobs followed per state, stacked.",
                [
                    query(
                        f"sum by (state) (aws_iot_jobs_exporter_jobs_tracked{{{t}}})",
                        "{{state}}",
                    )
                ],
                "short",
                stack=True,
            ),
            table(
                "Build",
                "Version of each exporter replica and when it last loaded its configuration.",
                [
                    # max without () drops only the metric name, which would keep the
                    # rows of the two queries apart (see table()).
                    query(f"max without () (aws_iot_jobs_exporter_build_info{{{self.sel}}})"),
                    query(
                        "aws_iot_jobs_exporter_config_last_reload_success_timestamp_seconds"
                        f"{{{self.sel}}}{MS}"
                    ),
                ],
                "none",
                columns={
                    "Value #A": {"custom.hidden": True},
                    "Value #B": {"displayName": "Config loaded", "unit": "dateTimeAsIso"},
                },
                w=12,
            ),
        ]
        return dashboard(
            self.uids["exporter"],
            "AWS IoT Jobs / Exporter",
            "Health of aws-iot-jobs-exporter: scrapes, AWS API calls, throttling, latency, "
            "collection cycles, data age and jobs tracked.",
            panels,
            job_variables(self.sel),
        )

    def all(self) -> dict[str, dict[str, Any]]:
        return {
            "aws-iot-jobs-fleet.json": self.fleet(),
            "aws-iot-job-detail.json": self.job(),
            "aws-iot-jobs-exporter.json": self.exporter(),
        }


STATUS_CODES = [
    (1, "SCHEDULED"),
    (2, "IN_PROGRESS"),
    (3, "COMPLETED"),
    (4, "CANCELED"),
    (5, "DELETION_IN_PROGRESS"),
]
STATUS_COLORS = {
    "SCHEDULED": "purple",
    "IN_PROGRESS": "blue",
    "COMPLETED": "green",
    "CANCELED": "orange",
    "DELETION_IN_PROGRESS": "grey",
}


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(duration[:-1]) * units[duration[-1]]


def render(config: dict[str, Any]) -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {
        name: json.dumps(board, indent=2, sort_keys=False) + "\n"
        for name, board in Mixin(config).all().items()
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
