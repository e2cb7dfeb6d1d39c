"""Generates the Grafana dashboards of the mixin (grafana/dashboards/*.json) with Grafana's SDK.

Usage:
    python grafana/generate.py           # rewrite grafana/dashboards/*.json
    python grafana/generate.py --check   # exit 1 if they are out of date

Selectors, dashboard uids and alert thresholds come from exporter/mixin/mixin.yaml, the
same file the Prometheus rules are generated from, so panels and alerts agree.

Dashboards, panels, queries, variables, field colours, thresholds, value mappings, overrides
and panel options are built with the typed builders of `grafana-foundation-sdk` (a test
dependency: the JSON is generated and committed, nothing of this runs in the exporter). The
SDK is pinned to one release in pyproject.toml: its models decide which keys the JSON has and
in which order, so another release can change the output, which `--check` then reports.

Compared with the hand-built dicts this module used to write, the JSON differs only where the
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
organize transformations, and a query variable's query object. Two things are placed by
this module rather than by the SDK: panel ids, which the SDK leaves unset, and grid
positions, because the SDK's automatic layout wraps to a new line only once a line is full,
so a panel that does not fit on the current line would overflow the 24 columns; `layout()`
wraps before it, as Grafana's editor does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the exporter package

from exporter import durations  # noqa: E402
from exporter.mixin import generate as rules  # noqa: E402
from exporter.table import IDENTITY_LABELS  # noqa: E402

MIXIN = ROOT / "exporter" / "mixin" / "mixin.yaml"
OUT_DIR = ROOT / "grafana" / "dashboards"

TAG = "aws-iot-jobs"
# One row per job in a Grafana grid of 24 columns.
WIDTH = 24
# The labels that identify a job: the metric table's, as in the rules' joins.
JOB_KEY = ", ".join(IDENTITY_LABELS)
RATE_PER_MINUTE = "suffix: executions/min"
# Grafana's date units take milliseconds; the exporter's timestamps are seconds.
MS = " * 1000"
# Statuses in which the exporter describes a job every interval: the data-stale alert's.
ACTIVE = rules.M_ACTIVE
# The colour of a value that is neither good nor bad. Without a colour of its own a stat or
# table field falls back on Grafana's default thresholds (red from 80), which would paint
# counts, durations and timestamps red; every such field gets this fixed colour instead.
NEUTRAL = "text"

Query = prometheus.Dataquery
Steps = list[tuple[float | None, str]]
Links = list[Builder[models.DashboardLink]]


class Panel(Protocol):
    """What every panel builder of the SDK has (stat, time series, table, state timeline).

    The SDK declares these methods on each panel kind rather than on a common base class;
    this protocol lets the shared settings be written once and still be type-checked.
    """

    def build(self) -> models.Panel: ...
    def id(self, id_val: int) -> Self: ...
    def grid_pos(self, grid_pos: models.GridPos) -> Self: ...
    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def datasource(self, datasource: models.DataSourceRef) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def span(self, w: int) -> Self: ...
    def height(self, h: int) -> Self: ...
    def with_target(self, target: Builder[Dataquery]) -> Self: ...
    def data_links(self, links: Links) -> Self: ...
    def mappings(self, mappings: list[models.ValueMapping]) -> Self: ...
    def color_scheme(self, color: Builder[models.FieldColor]) -> Self: ...
    def thresholds(self, thresholds: Builder[models.ThresholdsConfig]) -> Self: ...
    def overrides(
        self, overrides: list[Builder[models.DashboardFieldConfigSourceOverrides]]
    ) -> Self: ...
    def with_override(
        self, matcher: models.MatcherConfig, properties: list[models.DynamicConfigValue]
    ) -> Self: ...


P = TypeVar("P", bound=Panel)


def datasource() -> models.DataSourceRef:
    return models.DataSourceRef(type_val="prometheus", uid="${datasource}")


def load_mixin() -> dict[str, Any]:
    return rules.load_config(MIXIN)


# Links ------------------------------------------------------------------------------
# Grafana exposes a series' labels as ${__field.labels.x} in graphs, and a table row's
# columns as ${__data.fields.x}; job links are built for both.


def console_link(ref: str) -> dashboard_builders.DashboardLink:
    region, job_id = ref.format("region"), ref.format("job_id")
    return (
        dashboard_builders.DashboardLink("Open job in the AWS IoT console")
        .url(f"https://{region}.console.aws.amazon.com/iot/home?region={region}#/job/{job_id}")
        .target_blank(True)
    )


def job_dashboard_link(uid: str, ref: str) -> dashboard_builders.DashboardLink:
    return dashboard_builders.DashboardLink("Job detail").url(
        f"/d/{uid}?var-target={ref.format('target')}&var-region={ref.format('region')}"
        f"&var-job_id={ref.format('job_id')}&${{datasource:queryparam}}&${{__url_time_range}}"
    )


SERIES = "${{__field.labels.{}}}"
ROW = "${{__data.fields.{}}}"


# Field configuration ----------------------------------------------------------------


def fixed(color: str) -> models.FieldColor:
    return models.FieldColor(mode=models.FieldColorModeId.FIXED, fixed_color=color)


def by_thresholds() -> models.FieldColor:
    return models.FieldColor(mode=models.FieldColorModeId.THRESHOLDS)


def threshold_steps(steps: Steps) -> models.ThresholdsConfig:
    return models.ThresholdsConfig(
        mode=models.ThresholdsMode.ABSOLUTE,
        steps=[models.Threshold(value=value, color=color) for value, color in steps],
    )


def prop(name: str, value: object) -> models.DynamicConfigValue:
    return models.DynamicConfigValue(id_val=name, value=value)


def coloured_by(steps: Steps) -> list[models.DynamicConfigValue]:
    """Field properties that colour a column by thresholds, whatever the panel's default."""
    return [prop("color", by_thresholds()), prop("thresholds", threshold_steps(steps))]


def value_mappings(values: Sequence[tuple[int, str, str]]) -> list[models.ValueMapping]:
    """A value mapping from each code to its (text, colour), in that order."""
    return [
        models.ValueMap(
            options={
                str(code): models.ValueMappingResult(text=text, color=color, index=index)
                for index, (code, text, color) in enumerate(values)
            }
        )
    ]


# Panels -----------------------------------------------------------------------------


def query(expr: str, legend: str = "", *, instant: bool = False) -> Query:
    q = (
        prometheus.Dataquery()
        .datasource(datasource())
        .expr(expr)
        .legend_format(legend or "__auto")
        .format(PromQueryFormat.TIME_SERIES)
    )
    return q.instant() if instant else q.range()


def panel(
    builder: P,
    title: str,
    description: str,
    targets: list[Query],
    unit: str,
    *,
    w: int = 12,
    h: int = 8,
    links: Links | None = None,
    overrides: Iterable[tuple[models.MatcherConfig, list[models.DynamicConfigValue]]] = (),
    mappings: list[models.ValueMapping] | None = None,
    thresholds: Steps | None = None,
    color: str | None = None,
) -> P:
    """The settings every panel kind shares; the builder's own options are set by its kind."""
    b = builder  # returned as given, so the caller keeps its kind's type
    b.title(title).description(description).datasource(datasource()).unit(unit)
    b.span(w).height(h)
    for ref, target in zip("ABCDEFGH", targets, strict=False):
        b.with_target(target.ref_id(ref))
    if links:
        b.data_links(links)
    if mappings:
        b.mappings(mappings)
    if thresholds and color:
        raise ValueError(f"{title}: a colour comes from thresholds or is fixed, not both")
    if thresholds:
        b.color_scheme(dashboard_builders.FieldColor().mode(models.FieldColorModeId.THRESHOLDS))
        b.thresholds(
            dashboard_builders.ThresholdsConfig()
            .mode(models.ThresholdsMode.ABSOLUTE)
            .steps([models.Threshold(value=v, color=c) for v, c in thresholds])
        )
    elif color:
        b.color_scheme(
            dashboard_builders.FieldColor().mode(models.FieldColorModeId.FIXED).fixed_color(color)
        )
    for matcher, properties in overrides:
        b.with_override(matcher, properties)
    return builder


def by_name(name: str) -> models.MatcherConfig:
    return models.MatcherConfig(id_val="byName", options=name)


def by_regexp(pattern: str) -> models.MatcherConfig:
    return models.MatcherConfig(id_val="byRegexp", options=pattern)


def by_query(ref: str) -> models.MatcherConfig:
    return models.MatcherConfig(id_val="byFrameRefID", options=ref)


def timeseries_panel(
    title: str,
    description: str,
    targets: list[Query],
    unit: str,
    *,
    stack: bool = False,
    threshold_line: float | None = None,
    **kwargs: Any,
) -> timeseries.Panel:
    b = timeseries.Panel().fill_opacity(20 if stack else 0)
    b.show_points(common.VisibilityMode.NEVER)
    if stack:
        b.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL).group("A"))
    if threshold_line is not None:
        b.thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
        kwargs["thresholds"] = [(None, "transparent"), (threshold_line, "red")]
    b.legend(
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.RIGHT)
        .calcs(["lastNotNull"])
    )
    b.tooltip(
        common_builders.VizTooltipOptions()
        .mode(common.TooltipDisplayMode.MULTI)
        .sort(common.SortOrder.DESCENDING)
    )
    return panel(b, title, description, targets, unit, **kwargs)


def stat_panel(
    title: str, description: str, targets: list[Query], unit: str, **kwargs: Any
) -> stat.Panel:
    """A stat; its values are neutral unless it is given thresholds with a meaning."""
    kwargs.setdefault("w", 6)
    kwargs.setdefault("h", 5)
    if not kwargs.get("thresholds"):
        kwargs.setdefault("color", NEUTRAL)
    b = (
        stat.Panel()
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
        )
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .orientation(common.VizOrientation.HORIZONTAL)
    )
    return panel(b, title, description, targets, unit, **kwargs)


def table_panel(
    title: str,
    description: str,
    targets: list[Query],
    unit: str,
    *,
    columns: dict[str, list[models.DynamicConfigValue]],
    hide: Iterable[str] = ("Time", "job", "account_id", "__name__"),
    sort: str | None = None,
    **kwargs: Any,
) -> table.Panel:
    """A table of instant queries merged on their labels; `columns` names value columns.

    Grafana's merge joins rows whose shared columns agree, and a table-format query has a
    column per label, the metric name (__name__) included. Queries of one table must
    therefore return no metric name (per_job() and aggregations drop it), or rows of
    different queries never join. Columns are neutral unless `columns` colours them.
    """
    if not kwargs.get("thresholds"):
        kwargs.setdefault("color", NEUTRAL)
    kwargs.setdefault("w", WIDTH)
    b = table.Panel().show_header(True).cell_height(common.TableCellHeight.SM)
    if sort:
        b.sort_by([common_builders.TableSortByFieldState().display_name(sort).desc(True)])
    b.transformations(
        [
            models.DataTransformerConfig(id_val="merge", options={}),
            models.DataTransformerConfig(
                id_val="organize", options={"excludeByName": dict.fromkeys(hide, True)}
            ),
        ]
    )
    targets = [t.format(PromQueryFormat.TABLE).instant() for t in targets]
    overrides = [(by_name(column), props) for column, props in columns.items()]
    return panel(b, title, description, targets, unit, overrides=overrides, **kwargs)


def state_timeline_panel(
    title: str,
    description: str,
    targets: list[Query],
    *,
    show_value: common.VisibilityMode,
    **kwargs: Any,
) -> statetimeline.Panel:
    b = statetimeline.Panel().show_value(show_value).merge_values(True).row_height(0.8)
    # Grafana's own defaults, written out: the SDK's would hide the legend and sort the
    # tooltip.
    b.legend(
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .calcs([])
    )
    b.tooltip(
        common_builders.VizTooltipOptions()
        .mode(common.TooltipDisplayMode.SINGLE)
        .sort(common.SortOrder.NONE)
    )
    return panel(b, title, description, targets, "none", w=WIDTH, h=5, **kwargs)


def row(title: str) -> dashboard_builders.Row:
    # Rows hold no data, so they have neither queries nor a unit.
    return dashboard_builders.Row(title).collapsed(False)


Item = Panel | dashboard_builders.Row


def layout(items: list[Item]) -> list[Item]:
    """Places panels left to right, wrapping at the grid width; ids in order."""
    x = y = line_height = 0
    for index, item in enumerate(items, start=1):
        is_row = isinstance(item, dashboard_builders.Row)
        grid = item.build().grid_pos
        w, h = (WIDTH, 1) if is_row or grid is None else (grid.w, grid.h)
        if is_row or x + w > WIDTH:
            x, y, line_height = 0, y + line_height, 0
        position = models.GridPos(h=h, w=w, x=x, y=y)
        if isinstance(item, dashboard_builders.Row):
            item.id(index).grid_pos(position)
        else:
            item.id(index).grid_pos(position)
        x += w
        line_height = max(line_height, h)
        if is_row:
            x, y, line_height = 0, y + h, 0
    return items


# Variables --------------------------------------------------------------------------


def datasource_variable() -> dashboard_builders.DatasourceVariable:
    return (
        dashboard_builders.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .hide(models.VariableHide.DONT_HIDE)
        .regex("")
    )


def query_variable(
    name: str, label: str, definition: str, *, multi: bool = True
) -> dashboard_builders.QueryVariable:
    v = (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(datasource())
        .query({"query": definition, "refId": f"{name}-variable"})
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
        .hide(models.VariableHide.DONT_HIDE)
        .options([])
        .regex("")
    )
    # .* instead of a long alternation of every value when All is selected.
    return v.all_value(".*") if multi else v


def job_variables(sel: str, *, single_job: bool = False) -> list[Builder[models.VariableModel]]:
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
    items: list[Item],
    variables: list[Builder[models.VariableModel]],
) -> models.Dashboard:
    board = (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .timezone("utc")
        .editable()
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .link(
            dashboard_builders.DashboardLink("AWS IoT Jobs")
            .type(models.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .variables(variables)
        .annotations([])
    )
    for item in layout(items):
        if isinstance(item, dashboard_builders.Row):
            board.with_row(item)
        else:
            # Every panel builder of the SDK is a Builder; the protocol only says which
            # methods it has.
            assert isinstance(item, Builder)
            board.with_panel(item)
    return board.build()


# Dashboards -------------------------------------------------------------------------


class Mixin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.c = config
        self.sel = config["exporter_selector"]
        self.replicas = ", ".join(config["replica_labels"])
        self.uids = config["dashboard_uids"]
        # The AwsIotJobsExporterDataStale limit, in seconds.
        self.stale_after = durations.seconds(config["alerts"]["data_stale"]["max_age"])
        # Every job query filters on the dashboard's variables.
        self.f = f'{self.sel}, target=~"$target", region=~"$region", job_id=~"$job_id"'

    # New builders on every call: a builder is mutable, and a link shared by two panels
    # would be one object in both.
    def series_links(self) -> Links:
        return [console_link(SERIES), job_dashboard_link(self.uids["job"], SERIES)]

    def row_links(self) -> Links:
        return [console_link(ROW), job_dashboard_link(self.uids["job"], ROW)]

    def dedup(self, metric: str, extra: str = "") -> str:
        matchers = ", ".join(m for m in (self.f, extra) if m)
        return f"max without ({self.replicas}) ({metric}{{{matchers}}})"

    def latest(self, *series: tuple[str, str], suffix: str = "") -> list[Query]:
        """An instant query per (metric, legend) of the selected jobs, replicas folded;
        `suffix` ends every expression (MS for timestamps)."""
        return [query(self.dedup(name) + suffix, legend, instant=True) for name, legend in series]

    @staticmethod
    def per_job(expr: str) -> str:
        """One series per job, labelled with the job's identity only and no metric name, so
        that the rows of a table's queries are the same and merge into one row per job."""
        return f"max by ({JOB_KEY}) (\n  {expr}\n)"

    def in_progress(self, expr: str) -> str:
        status = self.dedup("aws_iot_job_status", rules.M_IN_PROGRESS)
        return f"{expr} and on ({JOB_KEY}) ({status} == 1)"

    def status_code(self) -> str:
        # One series per job whose value names its status, so a state timeline draws one
        # row per job; value mappings turn the codes back into names.
        parts = []
        for code, name in STATUS_CODES:
            matcher = 'status="' + name + '"'
            parts.append(f"({self.dedup('aws_iot_job_status', matcher)} == 1) * {code}")
        return f"max by ({JOB_KEY}) (\n  " + "\n  or ".join(parts) + "\n)"

    @staticmethod
    def status_mappings() -> list[models.ValueMapping]:
        return value_mappings([(code, name, STATUS_COLORS[name]) for code, name in STATUS_CODES])

    # Fleet overview -----------------------------------------------------------------

    def fleet(self) -> models.Dashboard:
        alerts = self.c["alerts"]
        executions = self.dedup("aws_iot_job_executions")
        failure = f"aws_iot_job:executions_failure:ratio{{{self.f}}}"
        failure_steps: Steps = [(None, "green"), (alerts["failure_ratio_high"]["threshold"], "red")]

        def failure_column() -> list[models.DynamicConfigValue]:
            return [
                prop("displayName", "Failure ratio"),
                prop("custom.cellOptions", common.TableColorTextCellOptions()),
                *coloured_by(failure_steps),
            ]

        panels: list[Item] = [
            row("Now"),
            stat_panel(
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
                    (by_name(name), [prop("color", fixed(STATUS_COLORS[name]))])
                    for _, name in STATUS_CODES
                ],
                w=8,
            ),
            stat_panel(
                "Executions by state",
                "Executions of the selected jobs, by state. Failed and timed-out count "
                "attempts when a job retries.",
                [query(f"sum by (state) ({executions})", "{{state}}", instant=True)],
                "short",
                w=10,
            ),
            stat_panel(
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
            table_panel(
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
                    "Value #A": [
                        prop("displayName", "Progress"),
                        prop(
                            "custom.cellOptions",
                            common.TableBarGaugeCellOptions(mode=common.BarGaugeDisplayMode.BASIC),
                        ),
                        prop("color", fixed("blue")),
                        prop("min", 0),
                        prop("max", 1),
                    ],
                    "Value #B": failure_column(),
                    "Value #C": [
                        prop("displayName", "Queued or in progress"),
                        prop("unit", "short"),
                    ],
                    "Value #D": [
                        prop("displayName", "Rollout rate"),
                        prop("unit", RATE_PER_MINUTE),
                    ],
                },
                sort="Progress",
                links=self.row_links(),
                h=9,
            ),
            table_panel(
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
                    "Value #A": failure_column(),
                    "Value #B": [
                        prop("displayName", "Finished executions"),
                        prop("unit", "short"),
                    ],
                },
                sort="Failure ratio",
                links=self.row_links(),
                w=12,
                h=9,
            ),
            table_panel(
                "Firing alerts",
                "Alerts of this mixin that are pending or firing (Prometheus' ALERTS series).",
                [query('ALERTS{alertname=~"AwsIotJob.*", target=~"$target"}')],
                "none",
                columns={"Value": [prop("custom.hidden", True)]},
                hide=("Time", "__name__", "job", "account_id"),
                links=self.row_links(),
                w=12,
                h=9,
            ),
            timeseries_panel(
                "Failure ratio of active rollouts",
                "Failure ratio of every IN_PROGRESS job over time; the dashed line is the "
                "AwsIotJobFailureRatioHigh threshold.",
                [query(self.in_progress(failure), "{{target}} {{job_id}}")],
                "percentunit",
                threshold_line=alerts["failure_ratio_high"]["threshold"],
                links=self.series_links(),
            ),
            timeseries_panel(
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
            timeseries_panel(
                "Executions by state across the fleet",
                "Executions of the selected jobs by state, stacked.",
                [query(f"sum by (state) ({executions})", "{{state}}")],
                "short",
                stack=True,
            ),
            timeseries_panel(
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

    def job(self) -> models.Dashboard:
        alerts = self.c["alerts"]
        f = self.f
        age = f"(time() - {self.dedup('aws_iot_job_last_success_timestamp_seconds')})"
        active = self.dedup("aws_iot_job_status", ACTIVE)
        inactive = self.dedup("aws_iot_job_status", ACTIVE.replace("=~", "!~"))
        hidden = [prop("custom.hidden", True)]
        panels: list[Item] = [
            row("Job"),
            stat_panel(
                "Status",
                "Current status of the job.",
                [query(self.status_code(), "{{job_id}}", instant=True)],
                "none",
                mappings=self.status_mappings(),
                links=self.series_links(),
                w=6,
            ),
            stat_panel(
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
                links=self.series_links(),
                w=6,
            ),
            stat_panel(
                "Failure ratio",
                "Failed, timed-out and rejected executions over finished executions.",
                [query(f"aws_iot_job:executions_failure:ratio{{{f}}}", "{{job_id}}", instant=True)],
                "percentunit",
                thresholds=[(None, "green"), (alerts["failure_ratio_high"]["threshold"], "red")],
                links=self.series_links(),
                w=6,
            ),
            stat_panel(
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
                thresholds=[(None, "green"), (self.stale_after, "red")],
                overrides=[(by_query("B"), [prop("color", fixed(NEUTRAL))])],
                w=6,
            ),
            state_timeline_panel(
                "Status timeline",
                "The job's status over time.",
                [query(self.status_code(), "{{target}} {{job_id}}")],
                show_value=common.VisibilityMode.AUTO,
                mappings=self.status_mappings(),
                links=self.series_links(),
            ),
            row("Executions"),
            timeseries_panel(
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
                links=self.series_links(),
            ),
            timeseries_panel(
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
                links=self.series_links(),
            ),
            timeseries_panel(
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
                    (
                        by_regexp(".*abort threshold"),
                        [prop("custom.lineStyle", common.LineStyle(fill="dash", dash=[10, 10]))],
                    )
                ],
                links=self.series_links(),
            ),
            timeseries_panel(
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
                links=self.series_links(),
            ),
            timeseries_panel(
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
                links=self.series_links(),
            ),
            row("Configuration"),
            stat_panel(
                "Timeouts and retries",
                "In-progress timeout, retries allowed per failure type, and the executed "
                "things each abort criterion waits for.",
                self.latest(
                    ("aws_iot_job_in_progress_timeout_seconds", "in-progress timeout"),
                    ("aws_iot_job_retry_max_attempts", "retries on {{failure_type}}"),
                    (
                        "aws_iot_job_abort_min_executed_things",
                        "abort after executions ({{failure_type}})",
                    ),
                    ("aws_iot_job_presigned_url_expiry_seconds", "pre-signed URL expiry"),
                ),
                "short",
                overrides=[(by_regexp(".*(timeout|expiry)"), [prop("unit", "s")])],
                w=8,
                h=7,
            ),
            stat_panel(
                "Scheduling windows",
                "Scheduled start and end of the rollout, date-time maintenance windows and "
                "the next maintenance-window rollouts AWS has planned.",
                self.latest(
                    ("aws_iot_job_scheduling_start_timestamp_seconds", "start"),
                    ("aws_iot_job_scheduling_end_timestamp_seconds", "end"),
                    (
                        "aws_iot_job_scheduled_rollout_start_timestamp_seconds",
                        "rollout {{rollout}}",
                    ),
                    ("aws_iot_job_maintenance_window_start_timestamp_seconds", "window {{window}}"),
                    suffix=MS,
                ),
                "dateTimeAsIso",
                w=8,
                h=7,
            ),
            table_panel(
                "Maintenance windows and end behavior",
                "Recurring maintenance windows (the API's expression as is) with their "
                "length, the time to the next one and whether one is open (both as of the "
                "job's last describe), and what AWS does at the scheduled end.",
                [
                    query(
                        self.dedup("aws_iot_job_maintenance_window_duration_seconds")
                        + f"\n* on ({JOB_KEY}, window) group_left (start_time) "
                        + self.dedup("aws_iot_job_maintenance_window_info")
                    ),
                    query(self.dedup("aws_iot_job_scheduling_end_behavior")),
                    # The next start, read from the cron recurrence when the job was last
                    # described: "next window in 3 h".
                    query(
                        "(\n"
                        + self.dedup("aws_iot_job_maintenance_window_next_start_timestamp_seconds")
                        + "\n- time())"
                        + f"\n* on ({JOB_KEY}, window) group_left (start_time) "
                        + self.dedup("aws_iot_job_maintenance_window_info")
                    ),
                    query(
                        self.dedup("aws_iot_job_maintenance_window_open")
                        + f"\n* on ({JOB_KEY}, window) group_left (start_time) "
                        + self.dedup("aws_iot_job_maintenance_window_info")
                    ),
                ],
                "s",
                columns={
                    "Value #A": [prop("displayName", "Duration")],
                    "Value #B": hidden,
                    "Value #C": [prop("displayName", "Next window in")],
                    "Value #D": [prop("displayName", "Open"), prop("unit", "bool_yes_no")],
                },
                links=self.row_links(),
                w=8,
                h=7,
            ),
            table_panel(
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
                columns={f"Value #{ref}": hidden for ref in "ABCD"},
                links=self.row_links(),
                h=6,
            ),
            stat_panel(
                "Timestamps",
                "When the job was created, last updated and completed.",
                self.latest(
                    ("aws_iot_job_created_timestamp_seconds", "created"),
                    ("aws_iot_job_last_updated_timestamp_seconds", "last updated"),
                    ("aws_iot_job_completed_timestamp_seconds", "completed"),
                    suffix=MS,
                ),
                "dateTimeAsIso",
                w=8,
            ),
            stat_panel(
                "Exponential rollout",
                "The exponential rollout config: starting rate, factor, and the notified or "
                "succeeded things that trigger each increase.",
                self.latest(
                    (
                        "aws_iot_job_rollout_exponential_base_rate_per_minute",
                        "base rate per minute",
                    ),
                    ("aws_iot_job_rollout_exponential_increment_factor", "increment factor"),
                    (
                        "aws_iot_job_rollout_exponential_notified_things_threshold",
                        "increase every notified",
                    ),
                    (
                        "aws_iot_job_rollout_exponential_succeeded_things_threshold",
                        "increase every succeeded",
                    ),
                ),
                "short",
                w=8,
            ),
            stat_panel(
                "Rollout state",
                "Targets still being rolled out to, whether AWS is rolling out or canceling "
                "(isConcurrent), and whether the job was force-canceled.",
                self.latest(
                    ("aws_iot_job_processing_targets", "processing targets"),
                    ("aws_iot_job_is_concurrent", "concurrent"),
                    ("aws_iot_job_force_canceled", "force-canceled"),
                ),
                "short",
                w=8,
            ),
        ]
        # Every panel here shows series of the selected job: all link to it.
        for item in panels:
            if isinstance(item, dashboard_builders.Row):
                continue
            config = item.build().field_config
            if config is None or config.defaults is None or not config.defaults.links:
                item.data_links(self.series_links())
        return dashboard(
            self.uids["job"],
            "AWS IoT Jobs / Job detail",
            "One AWS IoT job: status over time, executions, rollout rate, failure ratio "
            "against the abort threshold, timeouts, retries and scheduling.",
            panels,
            job_variables(self.sel, single_job=True),
        )

    # Exporter -----------------------------------------------------------------------

    def exporter(self) -> models.Dashboard:
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

        def up_mapping() -> list[models.ValueMapping]:
            return value_mappings([(0, "down", "red"), (1, "up", "green")])

        def success_mapping() -> list[models.ValueMapping]:
            return value_mappings([(0, "failed", "red"), (1, "ok", "green")])

        panels: list[Item] = [
            row("Health"),
            stat_panel(
                "Exporters up",
                "Whether Prometheus can scrape each exporter replica.",
                [query(f"up{{{self.sel}}}", "{{instance}}", instant=True)],
                "none",
                mappings=up_mapping(),
            ),
            stat_panel(
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
            stat_panel(
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
            stat_panel(
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
                mappings=success_mapping(),
            ),
            state_timeline_panel(
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
                show_value=common.VisibilityMode.NEVER,
                mappings=success_mapping(),
            ),
            row("AWS API"),
            timeseries_panel(
                "API requests by outcome",
                "AWS API attempts per second by outcome; botocore's retries count each attempt.",
                [query(f"sum by (outcome) (rate({requests}[$__rate_interval]))", "{{outcome}}")],
                "reqps",
                stack=True,
            ),
            timeseries_panel(
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
            timeseries_panel(
                "Request latency",
                "Duration of API calls, retries included: median, 90th and 99th percentile "
                "per operation.",
                latency,
                "s",
            ),
            timeseries_panel(
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
            timeseries_panel(
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
            timeseries_panel(
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
                threshold_line=self.stale_after,
            ),
            timeseries_panel(
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
                    (
                        by_regexp("event-driven.*"),
                        [
                            prop("unit", "bool_yes_no"),
                            prop("custom.axisPlacement", common.AxisPlacement.RIGHT),
                        ],
                    )
                ],
            ),
            timeseries_panel(
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
            table_panel(
                "Build",
                "Version of each exporter replica and when it last loaded its configuration.",
                [
                    # max without () drops only the metric name, which would keep the
                    # rows of the two queries apart (see table_panel()).
                    query(f"max without () (aws_iot_jobs_exporter_build_info{{{self.sel}}})"),
                    query(
                        "aws_iot_jobs_exporter_config_last_reload_success_timestamp_seconds"
                        f"{{{self.sel}}}{MS}"
                    ),
                ],
                "none",
                columns={
                    "Value #A": [prop("custom.hidden", True)],
                    "Value #B": [
                        prop("displayName", "Config loaded"),
                        prop("unit", "dateTimeAsIso"),
                    ],
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

    def all(self) -> dict[str, models.Dashboard]:
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


def render(config: dict[str, Any]) -> dict[str, str]:
    """File name → JSON text of every dashboard, through the SDK's own JSON encoder."""
    return {
        name: json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=False) + "\n"
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
