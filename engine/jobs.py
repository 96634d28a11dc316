"""Job vocabulary shared by the whole engine: priorities, states and the one legal-transition table.

Every state change in Cutline goes through `next_state`, so "what can happen to a job" is answered
here and nowhere else (the h11 habit: transitions are data, an illegal one raises and names both
the state and the event).
"""
from __future__ import annotations

import enum


class Priority(enum.IntEnum):
    """Priority classes; a higher value is dispatched first."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    URGENT = 3

    @classmethod
    def parse(cls, text: str | int | "Priority") -> "Priority":
        if isinstance(text, Priority):
            return text
        if isinstance(text, int):
            return cls(text)
        try:
            return cls[str(text).strip().upper()]
        except KeyError:
            names = ", ".join(p.name.lower() for p in sorted(cls, reverse=True))
            raise ValueError(f"unknown priority {text!r}: expected one of {names}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class JobState(str, enum.Enum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    PREEMPTING = "preempting"
    PAUSED = "paused"        # held by the operator; not dispatched until resumed
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)

    @property
    def is_active(self) -> bool:
        """Holds (or is about to hold, or is releasing) a device."""
        return self in (JobState.STARTING, JobState.RUNNING, JobState.PREEMPTING)


class JobEvent(str, enum.Enum):
    DISPATCH = "dispatch"            # policy chose a device; worker is being started
    WORKER_STARTED = "worker_started"
    PREEMPT = "preempt"              # engine asked the worker to step aside
    WORKER_PREEMPTED = "worker_preempted"  # worker saved a checkpoint and exited resumable
    WORKER_FINISHED = "worker_finished"
    WORKER_FAILED = "worker_failed"
    PAUSE = "pause"                  # operator hold
    RESUME = "resume"
    CANCEL = "cancel"
    RETRY = "retry"                  # operator retries a failed job from its last checkpoint
    RECOVER = "recover"              # engine restart found the job active with no live worker


S, E = JobState, JobEvent
TRANSITIONS: dict[JobState, dict[JobEvent, JobState]] = {
    S.QUEUED: {E.DISPATCH: S.STARTING, E.PAUSE: S.PAUSED, E.CANCEL: S.CANCELLED},
    S.STARTING: {
        E.WORKER_STARTED: S.RUNNING,
        E.PREEMPT: S.PREEMPTING,
        E.PAUSE: S.PREEMPTING,
        E.CANCEL: S.PREEMPTING,
        E.WORKER_PREEMPTED: S.QUEUED,
        E.WORKER_FINISHED: S.FINISHED,
        E.WORKER_FAILED: S.FAILED,
        E.RECOVER: S.QUEUED,
    },
    S.RUNNING: {
        E.PREEMPT: S.PREEMPTING,
        E.PAUSE: S.PREEMPTING,
        E.CANCEL: S.PREEMPTING,
        E.WORKER_PREEMPTED: S.QUEUED,
        E.WORKER_FINISHED: S.FINISHED,
        E.WORKER_FAILED: S.FAILED,
        E.RECOVER: S.QUEUED,
    },
    # Where a PREEMPTING job lands depends on why it was stopped; the engine passes the target.
    S.PREEMPTING: {
        E.WORKER_PREEMPTED: S.QUEUED,
        E.WORKER_FINISHED: S.FINISHED,
        E.WORKER_FAILED: S.FAILED,
        E.RECOVER: S.QUEUED,
        E.PAUSE: S.PREEMPTING,
        E.CANCEL: S.PREEMPTING,
    },
    S.PAUSED: {E.RESUME: S.QUEUED, E.CANCEL: S.CANCELLED},
    S.FAILED: {E.RETRY: S.QUEUED},
    S.FINISHED: {},
    S.CANCELLED: {},
}
del S, E


class IllegalTransition(ValueError):
    pass


def next_state(state: JobState, event: JobEvent) -> JobState:
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(f"can't handle event {event.value!r} in state {state.value!r}") from None
