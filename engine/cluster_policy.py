"""Where each job of a self-scheduling cluster pool (Slurm) should wait: a pure function.

On a cluster the cluster picks the victims, so Cutline cannot apply its anti-starvation rules
victim by victim as `policy.decide` does on local devices. It applies them through placement
instead, before the cluster gets to choose:

- **Daily cap**: an urgent job goes to the preempting route only while the day's cap has room,
  counting the urgent jobs already waiting there (each may cost one preemption). Past the cap it
  goes to the `urgent-no-preempt` route: first in line for free resources, preempting no one.
- **Protection after N preemptions**: a job preempted `max_preemptions_per_job` times waits in
  the `protected` route, whose partition nothing preempts, from its next start on.
- **Minimum runtime** has no per-job equivalent; the cluster's own `PreemptExemptTime` is its
  counterpart (docs/slurm.md).

Running jobs keep their route: a cluster does not move a running job between partitions.
Standard library only, no I/O, no clock.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.jobs import JobState, Priority
from engine.policy import JobView, Rules

ROUTE_URGENT_NO_PREEMPT = "urgent-no-preempt"
ROUTE_PROTECTED = "protected"
ROUTES = tuple(p.label for p in Priority) + (ROUTE_URGENT_NO_PREEMPT, ROUTE_PROTECTED)

_STARTED = (JobState.RUNNING, JobState.PREEMPTING)


@dataclass(frozen=True, slots=True)
class Placement:
    route: str                 # a class label, ROUTE_URGENT_NO_PREEMPT or ROUTE_PROTECTED
    reason: str | None = None  # why it is not its class's own route


def place(jobs: Iterable[JobView], rules: Rules) -> dict[str, Placement]:
    """A placement for every given job (the pool's jobs not yet ended), by id."""
    room = max(0, rules.daily_preemption_cap - rules.preemptions_today)
    out: dict[str, Placement] = {}
    for job in sorted(jobs, key=lambda j: (-int(j.priority), j.queue_rank, j.submitted_at, j.id)):
        if job.priority is Priority.URGENT:
            if job.state in _STARTED:
                out[job.id] = Placement(job.priority.label)  # what it cost is already counted
            elif room > 0:
                room -= 1
                out[job.id] = Placement(job.priority.label)
            else:
                out[job.id] = Placement(ROUTE_URGENT_NO_PREEMPT, (
                    f"daily preemption cap reached ({rules.preemptions_today} of {rules.daily_preemption_cap} "
                    "today, counting urgent jobs already waiting to preempt): it waits for free resources "
                    "and preempts no one"))
        elif job.preemptions >= rules.max_preemptions_per_job:
            out[job.id] = Placement(ROUTE_PROTECTED, (
                f"protected: preempted {job.preemptions} times (limit {rules.max_preemptions_per_job}), "
                "so it runs where nothing preempts it"))
        else:
            out[job.id] = Placement(job.priority.label)
    return out


__all__ = ["Placement", "ROUTES", "ROUTE_PROTECTED", "ROUTE_URGENT_NO_PREEMPT", "place"]
