"""What the simulator takes from botocore's `iot` service model: AWS's own enums and shapes.

The simulator validates against AWS's definition of the API, never against the
exporter's reading of it: that reading is what the simulator is there to check.
"""

from __future__ import annotations

import functools

import botocore.session
from botocore.model import ServiceModel, StringShape


@functools.cache
def _model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("iot")


def _enum(shape: str) -> tuple[str, ...]:
    found = _model().shape_for(shape)
    assert isinstance(found, StringShape), shape
    return tuple(found.enum)


@functools.cache
def job_statuses() -> tuple[str, ...]:
    """JobStatus: the `status` of ListJobs' filter and of DescribeJob (SCHEDULED included)."""
    return _enum("JobStatus")


@functools.cache
def execution_statuses() -> tuple[str, ...]:
    """JobExecutionStatus: the `status` of ListJobExecutionsForJob's filter and summaries."""
    return _enum("JobExecutionStatus")


@functools.cache
def describe_job_fields() -> frozenset[str]:
    """The members of DescribeJob's `job`."""
    job = _model().operation_model("DescribeJob").output_shape.members["job"]
    return frozenset(job.members)
