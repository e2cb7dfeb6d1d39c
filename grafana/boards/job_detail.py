"""The job-detail dashboard: one job, as an alert's dashboard_url opens it."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from exporter import durations

from .lib import (
    ACTIVE,
    JOB_KEY,
    MS,
    NEUTRAL,
    RATE_PER_MINUTE,
    Item,
    Mixin,
    Query,
    by_query,
    by_regexp,
    coloured_by,
    dashboard,
    exporter_url_variable,
    fixed,
    heatmap_panel,
    job_variables,
    prop,
    query,
    row,
    stat_panel,
    state_timeline_panel,
    status_page_link,
    table_panel,
    timeseries_panel,
)


def build(m: Mixin) -> models.Dashboard:
    alerts = m.c["alerts"]
    f = m.f
    age = f"(time() - {m.dedup('aws_iot_job_last_success_timestamp_seconds')})"
    active = m.dedup("aws_iot_job_status", ACTIVE)
    inactive = m.dedup("aws_iot_job_status", ACTIVE.replace("=~", "!~"))
    hidden = [prop("custom.hidden", True)]
    panels: list[Item] = [
        row("Job"),
        stat_panel(
            "Status",
            "Current status of the job.",
            [query(m.status_code(), "{{job_id}}", instant=True)],
            "none",
            mappings=m.status_mappings(),
            links=m.series_links(),
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
            links=m.series_links(),
            w=6,
        ),
        stat_panel(
            "Failure ratio",
            "Failed, timed-out and rejected executions over finished executions.",
            [query(f"aws_iot_job:executions_failure:ratio{{{f}}}", "{{job_id}}", instant=True)],
            "percentunit",
            thresholds=[(None, "green"), (alerts["failure_ratio_high"]["threshold"], "red")],
            links=m.series_links(),
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
            thresholds=[(None, "green"), (m.stale_after, "red")],
            overrides=[(by_query("B"), [prop("color", fixed(NEUTRAL))])],
            w=6,
        ),
        state_timeline_panel(
            "Status timeline",
            "The job's status over time.",
            [query(m.status_code(), "{{target}} {{job_id}}")],
            show_value=common.VisibilityMode.AUTO,
            mappings=m.status_mappings(),
            links=m.series_links(),
        ),
        row("Executions"),
        timeseries_panel(
            "Executions by state",
            "The job's executions by state, stacked. With retries, failed and timed-out "
            "count attempts.",
            [
                query(
                    f"sum by ({JOB_KEY}, state) ({m.dedup('aws_iot_job_executions')})",
                    "{{state}}",
                )
            ],
            "short",
            stack=True,
            links=m.series_links(),
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
                    m.dedup("aws_iot_job_rollout_observed_rate_per_minute"),
                    "observed incl. retries",
                ),
                query(m.dedup("aws_iot_job_rollout_rate_limit_per_minute"), "allowed now"),
                query(m.dedup("aws_iot_job_rollout_maximum_per_minute"), "maximum"),
            ],
            RATE_PER_MINUTE,
            links=m.series_links(),
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
                    m.dedup("aws_iot_job_abort_threshold_ratio"),
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
            links=m.series_links(),
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
            links=m.series_links(),
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
                    f"{m.replicas}) (rate(aws_iot_job_execution_events_total"
                    f"{{{f}}}[$__rate_interval]))\n"
                    ") * 60",
                    "{{status}} {{reason}}",
                )
            ],
            RATE_PER_MINUTE,
            stack=True,
            links=m.series_links(),
        ),
        *stuck_executions(m),
        row("Configuration"),
        stat_panel(
            "Timeouts and retries",
            "In-progress timeout, retries allowed per failure type, and the executed "
            "things each abort criterion waits for.",
            m.latest(
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
            m.latest(
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
                    m.dedup("aws_iot_job_maintenance_window_duration_seconds")
                    + f"\n* on ({JOB_KEY}, window) group_left (start_time) "
                    + m.dedup("aws_iot_job_maintenance_window_info")
                ),
                query(m.dedup("aws_iot_job_scheduling_end_behavior")),
                # The next start, read from the cron recurrence when the job was last
                # described: "next window in 3 h".
                query(
                    "(\n"
                    + m.dedup("aws_iot_job_maintenance_window_next_start_timestamp_seconds")
                    + "\n- time())"
                    + f"\n* on ({JOB_KEY}, window) group_left (start_time) "
                    + m.dedup("aws_iot_job_maintenance_window_info")
                ),
                query(
                    m.dedup("aws_iot_job_maintenance_window_open")
                    + f"\n* on ({JOB_KEY}, window) group_left (start_time) "
                    + m.dedup("aws_iot_job_maintenance_window_info")
                ),
            ],
            "s",
            columns={
                "Value #A": [prop("displayName", "Duration")],
                "Value #B": hidden,
                "Value #C": [prop("displayName", "Next window in")],
                "Value #D": [prop("displayName", "Open"), prop("unit", "bool_yes_no")],
            },
            links=m.row_links(),
            w=8,
            h=7,
        ),
        table_panel(
            "Job info",
            "Metadata of the job: targets, target selection, namespace, template, "
            "software package versions and reason code (set on cancel or update).",
            [
                query(m.dedup("aws_iot_job_info")),
                query(m.dedup("aws_iot_job_target_info")),
                query(m.dedup("aws_iot_job_reason_info")),
                query(m.dedup("aws_iot_job_destination_package_version_info")),
            ],
            "none",
            columns={f"Value #{ref}": hidden for ref in "ABCD"},
            links=m.row_links(),
            h=6,
        ),
        stat_panel(
            "Timestamps",
            "When the job was created, last updated and completed.",
            m.latest(
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
            m.latest(
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
            m.latest(
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
            item.data_links(m.series_links())
    return dashboard(
        m.uids["job"],
        "AWS IoT Jobs / Job detail",
        "One AWS IoT job: status over time, executions, rollout rate, failure ratio "
        "against the abort threshold, timeouts, retries and scheduling.",
        panels,
        [*job_variables(m.sel, single_job=True), exporter_url_variable()],
    )


def stuck_executions(m: Mixin) -> list[Item]:
    """Queued and in-progress executions as the job's last sweep saw them: how old they
    are, which are stuck, how many retry, and how long finished ones waited and ran."""
    alerts = m.c["alerts"]
    stuck, sweep = alerts["executions_stuck"], alerts["sweep_behind"]
    # The series of one job's executions per state, replicas folded.
    by_state = f"sum by ({JOB_KEY}, state) ({m.dedup('aws_iot_job_executions_stuck')})"
    window = m.c["time_in_state_window"]

    def age_heatmap(state: str, since: str) -> Item:
        name = state.replace("_", "-")
        return heatmap_panel(
            f"{name.capitalize()} executions by age",
            f"The job's {name.replace('-', ' ')} executions at each sweep by their age since "
            f"{since}: each cell counts those between two bucket bounds (5m, 15m, 1h, 6h, "
            "1d, 7d, older), from the cumulative max_age buckets of "
            "aws_iot_job_executions_by_age.",
            [
                query(
                    f"sum by ({JOB_KEY}, max_age) (\n  "
                    + m.dedup("aws_iot_job_executions_by_age", f'state="{state}"')
                    + "\n)"
                )
            ],
            "s",
            bucket_label="max_age",
        )

    def time_in_state(histogram: str, quantile: float, legend: str) -> Query:
        # From the buckets rather than the recording rule: Grafana reads the exemplars,
        # a thing name and execution number per bucket, only from the histogram's series.
        buckets = f"aws_iot_job_{histogram}_bucket{{{m.f}}}"
        return query(
            f"histogram_quantile(\n  {quantile:g},\n  sum by ({JOB_KEY}, le) (\n"
            f"    max without ({m.replicas}) (rate({buckets}[{window}]))\n  )\n)",
            legend,
        ).exemplar(True)

    return [
        row("Stuck executions"),
        stat_panel(
            "Stuck executions",
            "Executions queued or in progress for longer than their stuck threshold at the "
            f"last sweep (orange from {stuck['min_stuck']}), and their share of all the "
            "job's executions, red from the AwsIotJobExecutionsStuck threshold. The "
            "exporter's status page lists the oldest stuck devices by thing name: the link "
            "in this panel's header, at the address of the Exporter URL variable.",
            [
                query(by_state, "{{state}}", instant=True),
                query(
                    f"aws_iot_job:executions_stuck:ratio{{{m.f}}}",
                    "share of executions",
                    instant=True,
                ),
            ],
            "short",
            thresholds=[(None, "green"), (stuck["min_stuck"], "orange")],
            overrides=[
                (
                    by_query("B"),
                    [
                        prop("unit", "percentunit"),
                        *coloured_by([(None, "green"), (stuck["threshold"], "red")]),
                    ],
                )
            ],
            header_links=[status_page_link("Oldest stuck devices (exporter status page)")],
            w=8,
        ),
        stat_panel(
            "Oldest execution",
            "Age of the oldest queued execution (since queuedAt) and of the oldest one in "
            "progress (since startedAt) at the last sweep, and how long an execution may "
            "stay in each state before it counts as stuck.",
            [
                query(
                    f"time() - {m.dedup('aws_iot_job_executions_oldest_timestamp_seconds')}",
                    "oldest {{state}}",
                    instant=True,
                ),
                query(
                    m.dedup("aws_iot_job_executions_stuck_threshold_seconds"),
                    "{{state}} stuck after",
                    instant=True,
                ),
            ],
            "s",
            w=8,
        ),
        stat_panel(
            "Sweep age",
            "Time since the exporter last read the job's queued and in-progress executions "
            "(ListJobExecutionsForJob): the counts on this row are that old. Red from the "
            f"AwsIotJobsExporterSweepBehind limit ({sweep['max_age']}).",
            [
                query(
                    f"time() - {m.dedup('aws_iot_job_executions_sweep_timestamp_seconds')}",
                    "last sweep",
                    instant=True,
                )
            ],
            "s",
            thresholds=[(None, "green"), (durations.seconds(sweep["max_age"]), "red")],
            w=8,
        ),
        age_heatmap("queued", "queuedAt"),
        age_heatmap("in_progress", "startedAt"),
        timeseries_panel(
            "Stuck executions over time",
            "Executions stuck per state at each sweep, stacked.",
            [query(by_state, "{{state}}")],
            "short",
            stack=True,
            w=8,
        ),
        timeseries_panel(
            "Time in state",
            "How long the job's executions that left a state waited in it: median and 90th "
            f"percentile over {window} of the time queued (queuedAt to startedAt) and of the "
            "run (startedAt to the end; targets with job events only). The dots are "
            "exemplars: the thing name and execution number of an execution in the bucket.",
            [
                time_in_state("execution_queued_duration_seconds", 0.5, "queued p50"),
                time_in_state("execution_queued_duration_seconds", 0.9, "queued p90"),
                time_in_state("execution_run_duration_seconds", 0.5, "run p50"),
                time_in_state("execution_run_duration_seconds", 0.9, "run p90"),
            ],
            "s",
            w=8,
        ),
        timeseries_panel(
            "Executions by retry attempt",
            "Queued and in-progress executions by retry attempt at each sweep, stacked: "
            "attempt 0 is the first try, higher ones are devices trying again after failing "
            "or timing out.",
            [
                query(
                    f"sum by ({JOB_KEY}, retry_attempt) (\n  "
                    + m.dedup("aws_iot_job_executions_by_retry_attempt")
                    + "\n)",
                    "attempt {{retry_attempt}}",
                )
            ],
            "short",
            stack=True,
            w=8,
        ),
    ]
