"""Scheduling decisions: a pure function from a snapshot to actions, each with a reason.

`decide(snapshot) -> Decision` is the only entry point the engine needs. It does no I/O, reads no
clock (``snapshot.now`` is the time), starts no threads and imports only the standard library, so
the same snapshot always gives the same decision and a test runs in microseconds (the h11 habit).
Carrying the actions out -- writing the transition, starting a worker, sending SIGTERM -- is the
executor's job, not this module's (the Kubernetes Evaluator/Executor split).

The steps carry the Kubernetes scheduler framework's names so a reader finds them:

1. **QueueSort** (`queue_sort_key`): effective priority (aging included) first, then base priority,
   the operator's drag order (`queue_rank`), submit time and id.
2. **Filter** (`device_allows`, `filter_devices`): healthy, allowed by the job's kind preference and
   by the urgent-only reservation, and free.
3. **Score** (`score_device`): among the free devices a job may use, prefer a GPU, keep reserved
   devices for later urgent jobs, then the lowest id.
4. **PostFilter = preemption** (`_Cycle.post_filter`, `select_victim`): only for an URGENT job that found no
   free device. Gates first (another victim still checkpointing, the daily cap), then the candidates
   (running, not urgent, not protected, on a device the urgent job may use), then the victim by the
   ordered tie-breakers in `VICTIM_TIE_BREAKERS`.

Dispatch is strict: queued jobs are visited once, in queue order, and each takes a free device
before any job below it is looked at. A lower job therefore never starts on a device that a higher,
still-waiting job could have used; it can only start on a device outside that job's set (a CPU slot
while an urgent GPU-only job waits, for example).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.jobs import JobState, Priority

__all__ = [
    "JobView",
    "DeviceView",
    "Rules",
    "Snapshot",
    "Start",
    "Preempt",
    "Decision",
    "TieBreaker",
    "VICTIM_TIE_BREAKERS",
    "decide",
    "dispatch_order",
    "effective_priority",
    "queue_sort_key",
    "device_allows",
    "filter_devices",
    "score_device",
    "protection",
    "select_victim",
    "victim_sort_key",
]

_URGENT = int(Priority.URGENT)
_HIGHEST_AGED = _URGENT - 1  # aging never reaches URGENT
_LABEL = {int(p): p.label for p in Priority}


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobView:
    """What the policy needs to know about one job. Times are seconds on the engine's clock."""

    id: str
    priority: Priority
    state: JobState
    queue_rank: int = 0                      # operator's order within the class; lower goes first
    submitted_at: float = 0.0
    waiting_since: float = 0.0               # when it last became QUEUED (aging counts from here)
    preemptions: int = 0                     # times this job has been preempted so far
    running_since: float | None = None       # when the current run started (resume included)
    device_id: str | None = None             # the device it holds while active
    progress: float = 0.0                    # 0..1
    last_checkpoint_at: float | None = None
    device_kind: str | None = None           # "gpu" / "cpu" restricts; None = any device
    owner: str = ""


@dataclass(frozen=True, slots=True)
class DeviceView:
    id: str
    kind: str                                # "gpu" | "cpu"
    healthy: bool = True
    reserved_for_urgent: bool = False        # honoured only when Rules.reserve_device_for_urgent


@dataclass(frozen=True, slots=True)
class Rules:
    aging_interval_s: float = 3600.0         # each full interval waited lifts a job one class; <= 0 turns aging off
    aging_max_boost: int = 1                 # at most this many classes, and never up to URGENT
    daily_preemption_cap: int = 3
    preemptions_today: int = 0               # preemptions already done today (input; reset by a timer)
    max_preemptions_per_job: int = 2         # a job preempted this many times is protected
    min_runtime_s: float = 120.0             # a job running for less than this is protected
    reserve_device_for_urgent: bool = False  # when on, devices flagged reserved_for_urgent take URGENT only


@dataclass(frozen=True, slots=True)
class Snapshot:
    jobs: tuple[JobView, ...]
    devices: tuple[DeviceView, ...]
    rules: Rules
    now: float


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    job_id: str
    device_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Preempt:
    victim_id: str
    for_job_id: str
    device_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Actions to carry out, and why every queued job that is not started this time waits.

    Actions appear in the queue order of the job they serve (a Preempt under its urgent job);
    ``waiting`` lists (job_id, reason) in queue order.
    """

    actions: tuple[Start | Preempt, ...]
    waiting: tuple[tuple[str, str], ...]

    @property
    def starts(self) -> tuple[Start, ...]:
        return tuple(a for a in self.actions if isinstance(a, Start))

    @property
    def preemptions(self) -> tuple[Preempt, ...]:
        return tuple(a for a in self.actions if isinstance(a, Preempt))

    def reason_for(self, job_id: str) -> str | None:
        """The waiting reason of a queued job, or None if it was started (or is not queued)."""
        for jid, reason in self.waiting:
            if jid == job_id:
                return reason
        return None


# --------------------------------------------------------------------------------------------------
# QueueSort
# --------------------------------------------------------------------------------------------------


def _aged(base: int, waited: float, rules: Rules) -> int:
    """The class a job of class ``base`` reaches after waiting ``waited`` seconds."""
    interval = rules.aging_interval_s
    if base >= _HIGHEST_AGED or interval <= 0 or rules.aging_max_boost <= 0 or waited < interval:
        return base
    return min(base + min(int(waited // interval), int(rules.aging_max_boost)), _HIGHEST_AGED)


def effective_priority(job: JobView, rules: Rules, now: float) -> float:
    """Base priority plus aging: one class per full `aging_interval_s` waited while QUEUED,
    at most `aging_max_boost` classes and never up to URGENT. Only queued jobs age."""
    if job.state is not JobState.QUEUED:
        return float(job.priority)
    return float(_aged(int(job.priority), now - job.waiting_since, rules))


def queue_sort_key(job: JobView, rules: Rules, now: float) -> tuple:
    """QueueSort: effective priority desc, base priority desc, queue_rank, submitted_at, id."""
    return (
        -effective_priority(job, rules, now),
        -int(job.priority),
        job.queue_rank,
        job.submitted_at,
        job.id,
    )


def dispatch_order(snapshot: Snapshot) -> list[str]:
    """Ids of the queued jobs in the order `decide` visits them."""
    rules, now = snapshot.rules, snapshot.now
    queued = [j for j in snapshot.jobs if j.state is JobState.QUEUED]
    queued.sort(key=lambda j: queue_sort_key(j, rules, now))
    return [j.id for j in queued]


# --------------------------------------------------------------------------------------------------
# Filter and Score
# --------------------------------------------------------------------------------------------------


def _is_urgent(job: JobView) -> bool:
    return job.priority >= _URGENT


def _reserved(device: DeviceView, rules: Rules) -> bool:
    return rules.reserve_device_for_urgent and device.reserved_for_urgent


def device_allows(device: DeviceView, job: JobView, rules: Rules) -> bool:
    """Filter, without the 'free' test: healthy, right kind, and the reservation lets this job in."""
    if not device.healthy:
        return False
    if job.device_kind is not None and device.kind != job.device_kind:
        return False
    if _reserved(device, rules) and not _is_urgent(job):
        return False
    return True


def score_device(device: DeviceView, rules: Rules) -> tuple:
    """Score (lower sorts first): a GPU before a CPU slot, an unreserved device before a reserved
    one (an urgent job leaves the reserved device to the next urgent job when it can), then id."""
    return (device.kind != "gpu", _reserved(device, rules), device.id)


def filter_devices(
    job: JobView, devices: Iterable[DeviceView], rules: Rules, busy: Iterable[str] = ()
) -> tuple[DeviceView, ...]:
    """Filter: the free devices this job may take, best first by `score_device`.
    ``busy`` holds the ids of devices that an active job holds."""
    busy = set(busy)
    ok = [d for d in devices if d.id not in busy and device_allows(d, job, rules)]
    ok.sort(key=lambda d: score_device(d, rules))
    return tuple(ok)


# --------------------------------------------------------------------------------------------------
# PostFilter: preemption
# --------------------------------------------------------------------------------------------------


def _secs(seconds: float) -> str:
    return f"{seconds:.0f} s"


def _times(n: int) -> str:
    return f"{n} time" if n == 1 else f"{n} times"


def protection(job: JobView, rules: Rules, now: float) -> str | None:
    """Why a running job may not be preempted ("protected (...)"), or None if it may be."""
    if job.preemptions >= rules.max_preemptions_per_job:
        return f"protected (preempted {_times(job.preemptions)})"
    if job.running_since is None:
        return "protected (start time unknown)"
    runtime = now - job.running_since
    if runtime < rules.min_runtime_s:
        return f"protected (running {_secs(runtime)}, minimum {_secs(rules.min_runtime_s)})"
    return None


def _resumed_at(job: JobView, now: float) -> float:
    """The point a preempted job would restart from: its last checkpoint, or the start of this
    run if the checkpoint predates it (a checkpoint older than the run was its resume point)."""
    points = [t for t in (job.last_checkpoint_at, job.running_since) if t is not None]
    return max(points) if points else now


def _work_at_risk(job: JobView, now: float) -> float:
    return now - _resumed_at(job, now)


def _checkpoint_phrase(job: JobView, now: float) -> str:
    ckpt = job.last_checkpoint_at
    if ckpt is not None and (job.running_since is None or ckpt >= job.running_since):
        return f"checkpoint {_secs(now - ckpt)} ago"
    return f"started {_secs(_work_at_risk(job, now))} ago, no checkpoint since"


@dataclass(frozen=True, slots=True)
class TieBreaker:
    """One step of victim ordering: ``key`` sorts ascending (first = preempted first)."""

    name: str
    key: Callable[[JobView, float], Any]
    explain: Callable[[JobView, float], str]


# The victim order, most important first. Read top to bottom: this is "who gets preempted and why".
VICTIM_TIE_BREAKERS: tuple[TieBreaker, ...] = (
    TieBreaker("lowest priority", lambda j, now: int(j.priority), lambda j, now: _LABEL[int(j.priority)]),
    TieBreaker("loses least", _work_at_risk, _checkpoint_phrase),
    TieBreaker("least progress", lambda j, now: j.progress, lambda j, now: f"{j.progress:.0%} done"),
    TieBreaker(
        "latest start",
        lambda j, now: -(j.running_since if j.running_since is not None else now),
        lambda j, now: f"started {_secs(now - (j.running_since if j.running_since is not None else now))} ago",
    ),
    TieBreaker("job id", lambda j, now: j.id, lambda j, now: j.id),
)


def victim_sort_key(job: JobView, now: float) -> tuple:
    return tuple(tb.key(job, now) for tb in VICTIM_TIE_BREAKERS)


def select_victim(
    for_job: JobView,
    holders: Iterable[tuple[DeviceView, JobView]],
    rules: Rules,
    now: float,
    taken: Mapping[str, str] | None = None,
) -> tuple[JobView | None, str]:
    """Pick the job to preempt for the urgent ``for_job``.

    ``holders`` pairs each device the urgent job may use (healthy, right kind, reservation allows)
    with the active job holding it. ``taken`` maps victims already chosen in this decision to the
    urgent job they were chosen for. Returns (victim, reason for the Preempt) or (None, why not).
    """
    if not _is_urgent(for_job):
        return None, f"job {for_job.id} may not preempt: only urgent jobs preempt"
    taken = taken or {}
    candidates: list[JobView] = []
    refusals: list[str] = []
    for device, job in holders:
        if job.id in taken:
            refusals.append(f"job {job.id} is already being preempted for job {taken[job.id]}")
        elif _is_urgent(job):
            refusals.append(f"job {job.id} is urgent")
        elif job.state is not JobState.RUNNING:
            refusals.append(f"job {job.id} is {job.state.value}")
        elif (why := protection(job, rules, now)) is not None:
            refusals.append(f"job {job.id} is {why}")
        else:
            candidates.append(job)
    if not candidates:
        detail = ", ".join(refusals) if refusals else "no running job on a device it may use"
        return None, f"urgent; no preemptible victim: {detail}"

    candidates.sort(key=lambda j: victim_sort_key(j, now))
    victim = candidates[0]
    prio, loss = VICTIM_TIE_BREAKERS[0], VICTIM_TIE_BREAKERS[1]
    reason = (
        f"urgent job {for_job.id} needs a device; job {victim.id} is the lowest-priority preemptible job "
        f"({prio.explain(victim, now)}) and loses least ({loss.explain(victim, now)})"
    )
    if len(candidates) > 1:
        runner_up = candidates[1]
        for i, tb in enumerate(VICTIM_TIE_BREAKERS):
            if tb.key(victim, now) != tb.key(runner_up, now):
                if i >= 2:  # priority and loss are already named above
                    reason += (
                        f"; tie with job {runner_up.id} broken by {tb.name} "
                        f"({tb.explain(victim, now)} vs {tb.explain(runner_up, now)})"
                    )
                break
    return victim, reason


# --------------------------------------------------------------------------------------------------
# decide
# --------------------------------------------------------------------------------------------------


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _no_device_reason(job: JobView, devices: tuple[DeviceView, ...]) -> str:
    """Why a job has no device it may use at all, free or busy."""
    kind = f"{job.device_kind} " if job.device_kind else ""
    prefix = "urgent" if _is_urgent(job) else "waiting"
    of_kind = [d for d in devices if job.device_kind is None or d.kind == job.device_kind]
    if not of_kind:
        return f"{prefix}: no {kind}device"
    if not any(d.healthy for d in of_kind):
        return f"{prefix}: no healthy {kind}device"
    return f"{prefix}: every healthy {kind}device is reserved for urgent jobs"


class _Slot:
    """One distinct device set in the line, to say "3rd in line": a job is behind every earlier
    waiting job whose device set overlaps its own."""

    __slots__ = ("ids", "waiting", "overlaps")

    def __init__(self, ids: frozenset[str]) -> None:
        self.ids = ids
        self.waiting = 0
        self.overlaps: list[_Slot] = [self]

    def join(self) -> int:
        self.waiting += 1
        return sum(slot.waiting for slot in self.overlaps)


class _Group:
    """Queued jobs that may use the same devices (same kind preference, urgent or not)."""

    __slots__ = ("devices", "ids", "slot", "open", "head")

    def __init__(self, devices: tuple[DeviceView, ...], slot: _Slot) -> None:
        self.devices = devices           # devices allowed, free or not, best first
        self.ids = slot.ids
        self.slot = slot
        self.open = bool(devices)        # may still hold a free device (free only shrinks)
        self.head: str | None = None     # cached "waiting: all 3 devices busy; "


_ACTIVE = frozenset(s for s in JobState if s.is_active)


class _Cycle:
    """Mutable bookkeeping for one call of `decide` (never escapes it)."""

    __slots__ = (
        "rules", "now", "devices", "holder", "free", "preempting", "cap_left", "emitted", "taken",
        "_groups", "_slots",
    )

    def __init__(self, rules: Rules, now: float, devices: Iterable[DeviceView], active: list[JobView]) -> None:
        self.rules = rules
        self.now = now
        self.devices = tuple(sorted(devices, key=lambda d: d.id))
        if len({d.id for d in self.devices}) != len(self.devices):
            raise ValueError("duplicate device id in snapshot")
        active = sorted(active, key=lambda j: j.id)
        self.holder: dict[str, JobView] = {}
        for job in active:
            if job.device_id is not None:
                self.holder.setdefault(job.device_id, job)
        self.free = {d.id for d in self.devices if d.healthy and d.id not in self.holder}
        self.preempting = [j for j in active if j.state is JobState.PREEMPTING]
        self.cap_left = rules.daily_preemption_cap - rules.preemptions_today
        self.emitted = 0
        self.taken: dict[str, str] = {}
        self._groups: dict[tuple[str | None, bool], _Group] = {}
        self._slots: dict[frozenset[str], _Slot] = {}

    def group(self, job: JobView, urgent: bool) -> _Group:
        """Filter (without 'free'), cached per (kind, urgent): the devices the job may use, best first."""
        key = (job.device_kind, urgent)
        group = self._groups.get(key)
        if group is None:
            devs = [d for d in self.devices if device_allows(d, job, self.rules)]
            devs.sort(key=lambda d: score_device(d, self.rules))
            ids = frozenset(d.id for d in devs)
            slot = self._slots.get(ids)
            if slot is None:
                slot = self._slots[ids] = _Slot(ids)
                for other in self._slots.values():
                    if other is not slot and not other.ids.isdisjoint(ids):
                        other.overlaps.append(slot)
                        slot.overlaps.append(other)
            group = self._groups[key] = _Group(tuple(devs), slot)
        return group

    def post_filter(self, job: JobView, group: _Group) -> Preempt | str:
        """Preemption for an urgent job with no free device: a Preempt, or why it must wait."""
        if self.preempting:
            # No double preemption: a victim is still checkpointing; its device frees up soon.
            for p in self.preempting:
                if p.device_id in group.ids:
                    return (
                        f"urgent; waiting for {p.device_id}: job {p.id} is saving a checkpoint "
                        f"(no double preemption)"
                    )
            p = self.preempting[0]
            where = f" on {p.device_id}" if p.device_id else ""
            return f"urgent; no new preemption while job {p.id} is still being preempted{where}"
        if self.cap_left <= 0:
            used = self.rules.preemptions_today + self.emitted
            return f"urgent, but today's preemption cap ({used}/{self.rules.daily_preemption_cap}) is reached"
        holders = [(d, self.holder[d.id]) for d in group.devices if d.id in self.holder]
        victim, reason = select_victim(job, holders, self.rules, self.now, self.taken)
        if victim is None:
            return reason
        self.cap_left -= 1
        self.emitted += 1
        self.taken[victim.id] = job.id
        assert victim.device_id is not None
        return Preempt(victim.id, job.id, victim.device_id, reason)

    def reserved_free_note(self, job: JobView) -> str:
        """For a non-urgent job: which free devices it may not take because they are reserved."""
        if not self.rules.reserve_device_for_urgent or _is_urgent(job):
            return ""
        kept = [
            d.id for d in self.devices
            if d.id in self.free and d.reserved_for_urgent
            and (job.device_kind is None or d.kind == job.device_kind)
        ]
        if not kept:
            return ""
        verb = "is" if len(kept) == 1 else "are"
        return f"; {', '.join(kept)} {verb} kept free for urgent jobs"


def _class_phrase(base: int, eff: int) -> str:
    if eff > base:
        return f"{_LABEL[base]}, aged to {_LABEL[eff]}"
    return _LABEL[base]


def decide(snapshot: Snapshot) -> Decision:
    """The scheduling decision for one snapshot: which queued jobs start where, which running
    jobs are preempted for which urgent job, and why every other queued job waits."""
    rules, now, jobs = snapshot.rules, snapshot.now, snapshot.jobs
    if len({j.id for j in jobs}) != len(jobs):
        raise ValueError("duplicate job id in snapshot")

    # QueueSort, once. Same key as `queue_sort_key`, computed inline because this loop runs once
    # per queued job (10,000 of them must cost well under 100 ms).
    queued_state = JobState.QUEUED
    interval, max_boost = rules.aging_interval_s, int(rules.aging_max_boost)
    # a job waiting since before `aging_from` has aged at least one class (the same rule as `_aged`)
    aging_from = now - interval if interval > 0 and max_boost > 0 else float("-inf")
    keyed = []
    active = []
    for j in jobs:
        state = j.state
        if state is queued_state:
            base = int(j.priority)
            if base < _HIGHEST_AGED and j.waiting_since <= aging_from:
                eff = min(base + min(int((now - j.waiting_since) // interval), max_boost), _HIGHEST_AGED)
            else:
                eff = base
            keyed.append(((-eff, -base, j.queue_rank, j.submitted_at, j.id), j))
        elif state in _ACTIVE:
            active.append(j)
    keyed.sort(key=lambda kj: kj[0])

    cycle = _Cycle(rules, now, snapshot.devices, active)
    free = cycle.free
    actions: list[Start | Preempt] = []
    waiting: list[tuple[str, str]] = []
    notes: dict[str | None, str] = {}    # reserved-device note per kind; cleared on every Start

    for key, job in keyed:
        eff, base = -key[0], -key[1]
        urgent = base >= _URGENT
        group = cycle.group(job, urgent)
        if not group.devices:
            waiting.append((job.id, _no_device_reason(job, cycle.devices)))
            continue

        # Filter + Score: the best free device this job may use. Strict order: every job above
        # this one has already taken its device, so nothing lower can jump ahead of it.
        if group.open:
            device = next((d for d in group.devices if d.id in free), None)
            if device is not None:
                free.discard(device.id)
                notes.clear()
                actions.append(
                    Start(job.id, device.id, f"{device.id} is free; next in queue order ({_class_phrase(base, eff)})")
                )
                continue
            group.open = False

        place = group.slot.join()  # urgent jobs count in the line too
        if urgent:
            outcome = cycle.post_filter(job, group)
            if isinstance(outcome, Preempt):
                actions.append(outcome)
                waiting.append((
                    job.id,
                    f"urgent; preempting job {outcome.victim_id} on {outcome.device_id}; "
                    f"starts when it has saved its checkpoint",
                ))
            else:
                waiting.append((job.id, outcome))
            continue

        head = group.head
        if head is None:
            n, kind = len(group.devices), (f"{job.device_kind} " if job.device_kind else "")
            busy = f"{group.devices[0].id} busy" if n == 1 else f"all {n} {kind}devices busy"
            head = group.head = f"waiting: {busy}; "
        note = notes.get(job.device_kind)
        if note is None:
            note = notes[job.device_kind] = cycle.reserved_free_note(job)
        if eff > base:
            waiting.append((job.id, f"{head}{_ordinal(place)} in line (aged from {_LABEL[base]} to {_LABEL[eff]}){note}"))
        else:
            waiting.append((job.id, f"{head}{_ordinal(place)} in line{note}"))

    return Decision(tuple(actions), tuple(waiting))
