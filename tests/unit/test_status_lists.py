"""The status page's arithmetic, pure: the counting window and the job lists."""

from __future__ import annotations

from exporter.status import STATUS_WINDOW, JobView, LastError, job_lists, window_base


def test_the_window_starts_at_the_newest_sample_a_window_old() -> None:
    samples = [(0.0, 0, 0, 0, 0, 0), (100.0, 10, 1, 2, 5, 1), (400.0, 40, 2, 3, 9, 2)]
    now = (500.0, 50, 3, 4, 10, 3)
    assert window_base(samples, now) == samples[1]  # 400 s old, the newest that old
    assert window_base(samples[2:], now) == samples[2]  # none that old: the oldest
    assert window_base([], now) == now
    # Counters that started again (a new consumer): from now, never negative.
    assert window_base([(0.0, 0, 0, 0, 99, 0)], (STATUS_WINDOW + 1, 5, 0, 0, 1, 0))[4] == 1


def test_failing_jobs_stand_apart_from_stale_ones() -> None:
    error = LastError(90.0, "denied", "DescribeJob", "AccessDenied", "denied")
    jobs = [
        JobView("quiet", "active", "IN_PROGRESS", 80.0, False),
        JobView("old", "active", "IN_PROGRESS", 10.0, False),
        JobView("denied", "active", "IN_PROGRESS", 10.0, False),
        JobView("done", "frozen", "COMPLETED", 0.0, True),
        JobView("new", "pending", None, None, False),
    ]
    lists = job_lists(jobs, {"denied": error}, ("active", "frozen", "pending"), 100.0, 60.0)
    assert dict(lists.by_state) == {"active": 3, "frozen": 1, "pending": 1}
    assert dict(lists.by_status) == {"IN_PROGRESS": 3, "COMPLETED": 1}
    # Old and not failing is stale; failing is listed with its error, not as stale; a frozen
    # job is never stale.
    assert [j.job_id for j in lists.stale] == ["old"] and lists.stale_total == 1
    assert [(j.job_id, j.age_seconds, j.error) for j in lists.failing] == [("denied", 90.0, error)]
