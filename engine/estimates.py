"""Rough start-time estimates for the queue view: pure arithmetic, no I/O.

Each job's time left is its batches left times its seconds per batch (measured from its live
batch events by the caller; a job not yet measured borrows the median of those that are).
Queued jobs take the earliest freed device in queue order. A job whose length is unknown (it
never ran, so its batches per epoch are unknown) ends the estimate for everything behind it:
"—" is more honest than a guess.
"""
from __future__ import annotations

import heapq
import statistics
from collections.abc import Iterable, Mapping

from .jobs import JobState
from .store import JobRecord


def batches_left(job: JobRecord) -> float | None:
    if not job.epochs or not job.batches:
        return None
    return job.epochs * job.batches * (1.0 - job.progress)


def estimated_waits(queue: Iterable[JobRecord], device_count: int,
                    seconds_per_batch: Mapping[int, float]) -> dict[int, float | None]:
    """Seconds until each queued job starts (0 = as soon as a device is looked at), or None."""
    queue = list(queue)
    typical = statistics.median(seconds_per_batch.values()) if seconds_per_batch else None

    def length(job: JobRecord) -> float | None:
        left, spb = batches_left(job), seconds_per_batch.get(job.id, typical)
        return None if left is None or spb is None else left * spb

    active = [j for j in queue if j.state.is_active]
    free: list[float] = [0.0] * max(0, device_count - len(active))
    known = True
    for job in active:
        left = length(job)
        if left is None:
            known = False
        else:
            free.append(left)
    heapq.heapify(free)
    waits: dict[int, float | None] = {}
    for job in queue:
        if job.state is not JobState.QUEUED:
            continue
        if not free:
            waits[job.id] = None
            continue
        start = heapq.heappop(free)
        waits[job.id] = start if known or start == 0 else None
        job_length = length(job)
        if job_length is None:
            free = []
        else:
            heapq.heappush(free, start + job_length)
    return waits
