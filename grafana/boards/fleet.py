"""Fleet overview: every job the exporter follows, to spot the rollout that needs attention."""

from __future__ import annotations

from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from exporter.mixin import generate as rules

from .lib import (
    JOB_KEY,
    RATE_PER_MINUTE,
    STATUS_CODES,
    STATUS_COLORS,
    Item,
    Mixin,
    Steps,
    by_name,
    by_query,
    coloured_by,
    dashboard,
    fixed,
    job_variables,
    prop,
    query,
    query_variable,
    row,
    stat_panel,
    table_panel,
    timeseries_panel,
)


def build(m: Mixin) -> models.Dashboard:
    alerts = m.c["alerts"]
    executions = m.dedup("aws_iot_job_executions")
    failure = f"aws_iot_job:executions_failure:ratio{{{m.f}}}"
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
                    f"count by (status) ({m.dedup('aws_iot_job_status')} == 1)",
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
                    f"sum(aws_iot_job:executions_failed:sum{{{m.f}}})\n"
                    f"/ (sum(aws_iot_job:executions_terminal:sum{{{m.f}}}) > 0)",
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
                query(m.per_job(m.in_progress(expr)))
                for expr in (
                    f"aws_iot_job:executions_completion:ratio{{{m.f}}}",
                    failure,
                    f"aws_iot_job:executions_pending:sum{{{m.f}}}",
                    f"aws_iot_job:rollout_observed_rate_per_minute:avg_over_time{{{m.f}}}",
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
            links=m.row_links(),
            h=9,
        ),
        table_panel(
            "Top jobs by failure ratio",
            "The ten selected jobs with the highest failure ratio, whatever their status, "
            "with the number of finished executions the ratio is taken over.",
            [
                query(m.per_job(f"topk(10, {failure})")),
                query(
                    m.per_job(
                        f"aws_iot_job:executions_terminal:sum{{{m.f}}}\n"
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
            links=m.row_links(),
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
            links=m.row_links(),
            w=12,
            h=9,
        ),
        timeseries_panel(
            "Failure ratio of active rollouts",
            "Failure ratio of every IN_PROGRESS job over time; the dashed line is the "
            "AwsIotJobFailureRatioHigh threshold.",
            [query(m.in_progress(failure), "{{target}} {{job_id}}")],
            "percentunit",
            threshold_line=alerts["failure_ratio_high"]["threshold"],
            links=m.series_links(),
        ),
        timeseries_panel(
            "Observed rollout rate",
            "Executions created per minute, averaged, per target and region.",
            [
                query(
                    "sum by (target, region) ("
                    f"aws_iot_job:rollout_observed_rate_per_minute:avg_over_time{{{m.f}}})",
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
            [query(f"count by (status) ({m.dedup('aws_iot_job_status')} == 1)", "{{status}}")],
            "short",
            stack=True,
        ),
        *package_versions(m),
    ]
    return dashboard(
        m.uids["fleet"],
        "AWS IoT Jobs / Fleet overview",
        "Every AWS IoT job the exporter follows: statuses, executions, active rollouts, "
        "the worst failure ratios and firing alerts.",
        panels,
        [
            *job_variables(m.sel),
            query_variable(
                "package",
                "Package",
                f'label_values(aws_iot_package_version_things{{{m.sel}, target=~"$target", '
                'region=~"$region"}, package)',
            ),
        ],
    )


def package_versions(m: Mixin) -> list[Item]:
    """Which version the fleet runs, from fleet indexing (targets with `packages:`)."""
    # Package series carry no job_id: they are filtered on target and region only.
    where = f'{m.sel}, target=~"$target", region=~"$region"'
    versions = (
        f"max without ({m.replicas}) "
        f'(aws_iot_package_version_things{{{where}, package=~"$package"}})'
    )
    adoption = m.dedup("aws_iot_job_package_adoption_things")
    on_version = m.dedup("aws_iot_job_group_package_version_things")
    group_size = m.dedup("aws_iot_job_group_things")
    return [
        row("Package versions"),
        timeseries_panel(
            "Devices per package version",
            "Devices reporting each version of the package in their reserved package shadow, "
            'stacked: the largest versions, the rest as "other" (fleet indexing, counted '
            "every collector.packages.interval and trailing the devices by the index's lag). "
            "One panel per package chosen above, so a stack never adds two packages.",
            [query(f"sum by (package, version) ({versions})", "{{package}} {{version}}")],
            "short",
            stack=True,
            w=8,
        )
        .repeat("package")
        .repeat_direction("v"),
        timeseries_panel(
            "Adoption per job",
            "Devices in each active job's thing groups that report the version the job "
            "installs, beside its succeeded executions (dashed): a gap that widens is "
            "devices that report success but not the version.",
            [
                query(
                    f"sum by ({JOB_KEY}, package, version) ({adoption})",
                    "{{job_id}} on {{version}}",
                ),
                query(
                    f"sum by ({JOB_KEY}) ({m.dedup('aws_iot_job_executions', rules.M_SUCCEEDED)})"
                    f" and on ({JOB_KEY}) sum by ({JOB_KEY}) ({adoption})",
                    "{{job_id}} succeeded",
                ),
            ],
            "short",
            overrides=[
                (
                    by_query("B"),
                    [prop("custom.lineStyle", common.LineStyle(fill="dash", dash=[10, 10]))],
                )
            ],
            links=m.series_links(),
            w=8,
        ),
        timeseries_panel(
            "Lagging thing groups",
            "Share of each targeted thing group on the job's version (at most "
            "collector.packages.max_groups_per_job groups per job): the lowest lines are the "
            "groups the rollout has not reached.",
            [
                query(
                    f"sum by ({JOB_KEY}, thing_group, package, version) ({on_version})\n"
                    f"/ on ({JOB_KEY}, thing_group) group_left ()\n"
                    f"clamp_min(sum by ({JOB_KEY}, thing_group) ({group_size}), 1)",
                    "{{job_id}} {{thing_group}}",
                )
            ],
            "percentunit",
            links=m.series_links(),
            w=8,
        ),
    ]
