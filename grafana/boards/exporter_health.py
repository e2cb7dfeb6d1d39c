"""The exporter dashboard: is the exporter seeing AWS correctly, and how fast."""

from __future__ import annotations

from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from exporter import durations

from .lib import (
    ACTIVE,
    JOB_KEY,
    MS,
    Item,
    Mixin,
    by_regexp,
    dashboard,
    exporter_url_variable,
    job_variables,
    prop,
    query,
    row,
    stat_panel,
    state_timeline_panel,
    status_page_link,
    table_panel,
    timeseries_panel,
    value_mappings,
)


def build(m: Mixin) -> models.Dashboard:
    alerts = m.c["alerts"]
    t = f'{m.sel}, target=~"$target"'
    requests = f"aws_iot_jobs_exporter_api_requests_total{{{t}}}"
    throttled = f'aws_iot_jobs_exporter_api_requests_total{{{t}, outcome="throttled"}}'
    sweep_calls = (
        f'aws_iot_jobs_exporter_api_requests_total{{{t}, operation="ListJobExecutionsForJob"}}'
    )
    buckets = f"aws_iot_jobs_exporter_api_request_duration_seconds_bucket{{{t}}}"
    latency = [
        query(
            f"histogram_quantile({q}, sum by (le, operation) (rate({buckets}[$__rate_interval])))",
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
            [query(f"up{{{m.sel}}}", "{{instance}}", instant=True)],
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
                    f"aws_iot_jobs_exporter_config_last_reload_successful{{{m.sel}}}",
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
                    f"  time() - aws_iot_job_last_success_timestamp_seconds{{{m.f}}}\n"
                    f"  and on ({JOB_KEY}, {m.replicas}) "
                    f"(aws_iot_job_status{{{m.f}, {ACTIVE}}} == 1)\n"
                    ")",
                    "oldest active job {{target}}",
                ),
            ],
            "s",
            threshold_line=m.stale_after,
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
                query(f"max without () (aws_iot_jobs_exporter_build_info{{{m.sel}}})"),
                query(
                    "aws_iot_jobs_exporter_config_last_reload_success_timestamp_seconds"
                    f"{{{m.sel}}}{MS}"
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
        row("Execution sweeps"),
        timeseries_panel(
            "ListJobExecutionsForJob calls",
            "Attempts per second of the execution sweeps' ListJobExecutionsForJob calls, per "
            "target and outcome, against the collector.executions.requests_per_second budget "
            "(per account and region).",
            [
                query(
                    f"sum by (target, outcome) (rate({sweep_calls}[$__rate_interval]))",
                    "{{target}} {{outcome}}",
                )
            ],
            "reqps",
            w=8,
        ),
        timeseries_panel(
            "Sweep reads",
            "Pages and queued or in-progress execution summaries the sweeps read per second, "
            "per target: one page holds up to 250 summaries.",
            [
                query(
                    "sum by (target) (rate("
                    f"aws_iot_jobs_exporter_sweep_pages_total{{{t}}}[$__rate_interval]))",
                    "pages {{target}}",
                ),
                query(
                    "sum by (target) (rate("
                    f"aws_iot_jobs_exporter_sweep_executions_total{{{t}}}[$__rate_interval]))",
                    "executions {{target}}",
                ),
            ],
            "suffix: pages/s",
            overrides=[
                (
                    by_regexp("executions.*"),
                    [
                        prop("unit", "suffix: executions/s"),
                        prop("custom.axisPlacement", common.AxisPlacement.RIGHT),
                    ],
                )
            ],
            w=8,
        ),
        timeseries_panel(
            "Oldest sweep",
            "Per target and replica, the age of the oldest last sweep among the jobs with "
            "queued or in-progress executions: how far behind stuck counts and execution ages "
            "can be. The line is the AwsIotJobsExporterSweepBehind limit.",
            [
                query(
                    f"aws_iot_jobs_exporter_sweep_oldest_age_seconds{{{t}}}",
                    "{{target}} {{instance}}",
                )
            ],
            "s",
            threshold_line=durations.seconds(alerts["sweep_behind"]["max_age"]),
            header_links=[status_page_link("Exporter status page")],
            w=8,
        ),
    ]
    return dashboard(
        m.uids["exporter"],
        "AWS IoT Jobs / Exporter",
        "Health of aws-iot-jobs-exporter: scrapes, AWS API calls, throttling, latency, "
        "collection cycles, data age, jobs tracked and execution sweeps.",
        panels,
        [*job_variables(m.sel), exporter_url_variable()],
    )
