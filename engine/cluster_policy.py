"""Where each job of a self-scheduling cluster pool (Slurm) should wait: a pure function.

On a cluster the cluster picks the victims, so Cutline cannot apply its anti-starvation rules
victim by victim as `policy.decide` does on local devices. It applies them through placement
instead, before the cluster gets to choose:

- **Daily cap**: an urgent job goes to the preempting route only while the day's cap has room,
  counting the urgent jobs already sent there that have not started (each may cost one
  preemption). Past the cap it goes to the `urgent-no-preempt` route: it waits for free resources,
  preempting no one. A job once sent to the preempting route stays there: its share of the cap
  was charged when it was sent, and taking it back would waste a preemption already under way.
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

_WAITING = (JobState.QUEUED, JobState.STARTING)  # not started: may yet cost a preemption


@dataclass(frozen=True, slots=True)
class Placement:
    route: str                 # a class label, ROUTE_URGENT_NO_PREEMPT or ROUTE_PROTECTED
    reason: str | None = None  # why it is not its class's own route


def place(jobs: Iterable[JobView], rules: Rules, sent_to_preempt: Iterable[str] = ()) -> dict[str, Placement]:
    """A placement for every given job (the pool's jobs not yet ended), by id. `sent_to_preempt`:
    the jobs already handed to the cluster on the preempting route."""
    jobs = sorted(jobs, key=lambda j: (-int(j.priority), j.queue_rank, j.submitted_at, j.id))
    sent = set(sent_to_preempt)
    charged = sum(1 for j in jobs if j.id in sent and j.priority is Priority.URGENT and j.state in _WAITING)
    room = max(0, rules.daily_preemption_cap - rules.preemptions_today - charged)
    out: dict[str, Placement] = {}
    for job in jobs:
        if job.priority is Priority.URGENT:
            if job.state not in _WAITING or job.id in sent:
                out[job.id] = Placement(job.priority.label)  # started, paused, or already charged
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
