"""Sharding: which replica describes which job, by a stable hash, as kube-state-metrics does."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from exporter.config import Target


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's share of the jobs: a stable hash of (target, region, job id) mod total."""

    index: int = 0
    total: int = 1

    def owns(self, target: Target, job_id: str) -> bool:
        if self.total <= 1:
            return True
        # The target stands for its account: every replica reads the same config, so the
        # target's name and region identify the account before any job has been described.
        key = f"{target.name}\x00{target.region}\x00{job_id}".encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.total == self.index

    @classmethod
    def from_pod_name(cls, total: int, pod_name: str | None = None) -> Shard:
        """A StatefulSet pod's ordinal (`name-3` → shard 3), as kube-state-metrics does."""
        name = pod_name if pod_name is not None else os.environ.get("POD_NAME", "")
        match = re.search(r"-(\d+)$", name)
        if not match:
            raise ValueError(
                f"cannot take a shard ordinal from pod name {name!r}; set --shard or POD_NAME"
            )
        index = int(match.group(1))
        if index >= total:
            raise ValueError(f"pod ordinal {index} is not below --total-shards {total}")
        return cls(index, total)


# The one shard of an unsharded replica: every job is its own.
ONE_SHARD = Shard()
