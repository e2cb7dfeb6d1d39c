"""What the dashboards share: panel kinds, queries, links, layout, variables, settings.

Each dashboard is a module beside this one (fleet.py, job_detail.py, exporter_health.py)
with a `build(Mixin)`; grafana/generate.py writes them. Two things are placed here rather
than by the SDK: panel ids, which the SDK leaves unset, and grid positions, because the
SDK's automatic layout wraps to a new line only once a line is full, so a panel that does
not fit on the current line would overflow the 24 columns; `layout()` wraps before it, as
Grafana's editor does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import (
    heatmap,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import heatmap as models_heatmap
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from exporter import durations
from exporter.mixin import generate as rules
from exporter.table import IDENTITY_LABELS

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
# Where a browser reaches the exporter, for links to its status page: the default of the
# `exporter_url` variable, the port docker-compose.yml publishes. Grafana keeps a value the
# user sets in the dashboard's URL (var-exporter_url), and a saved dashboard keeps it.
EXPORTER_URL = "http://localhost:9947"

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
    def links(self, links: Links) -> Self: ...
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


def status_page_link(title: str) -> dashboard_builders.DashboardLink:
    """The exporter's status page, at the address of the `exporter_url` variable."""
    return dashboard_builders.DashboardLink(title).url("${exporter_url}/status").target_blank(True)


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
    header_links: Links | None = None,
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
    if header_links:
        # Links of the panel itself, in its header, rather than of a series or a cell.
        b.links(header_links)
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


def heatmap_panel(
    title: str,
    description: str,
    targets: list[Query],
    y_unit: str,
    bucket_label: str = "le",
    **kwargs: Any,
) -> heatmap.Panel:
    """A heatmap of cumulative buckets (`le`, or another label with upper bounds): one
    query, its series one per bucket.

    Grafana's Prometheus data source turns cumulative buckets into the count of each bucket
    when a query's format is heatmap, so the heatmap needs no calculation of its own; the
    cells count series values (`short`), the y axis has the buckets' unit.
    """
    b = (
        heatmap.Panel()
        .calculate(False)
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit(y_unit))
        .cell_values(heatmap.CellValues().unit("short"))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(models_heatmap.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(models_heatmap.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .show_legend()
        .mode(common.TooltipDisplayMode.SINGLE)
        .show_y_histogram()
    )
    legend = "{{" + bucket_label + "}}"
    targets = [t.format(PromQueryFormat.HEATMAP).legend_format(legend) for t in targets]
    return panel(b, title, description, targets, "short", **kwargs)


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


def exporter_url_variable() -> dashboard_builders.TextBoxVariable:
    return (
        dashboard_builders.TextBoxVariable("exporter_url")
        .label("Exporter URL")
        .description(
            "Where your browser reaches the exporter (scheme, host and port), for the links "
            "to its status page."
        )
        .default_value(EXPORTER_URL)
        .hide(models.VariableHide.DONT_HIDE)
    )


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


# Job status as a number, for stats and timelines: a value mapping names it again.
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


# The mixin's settings ---------------------------------------------------------------


class Mixin:
    """The settings of mixin.yaml the dashboards read, and the queries built on them."""

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
