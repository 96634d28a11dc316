"""The executor interface: how the engine runs, stops and watches workers, without knowing where.

The engine above this line never sees a process id or a signal. It asks an executor to launch a
job on a device, to stop it (checkpoint and exit resumable), to take a safety checkpoint, to kill
it, and whether it has ended; after a restart it asks the executor to adopt a worker that is still
alive. `LocalExecutor` (engine/local_executor.py) runs subprocesses on this machine; a cluster
executor (Slurm) implements the same methods with sbatch/scancel/squeue.

What a worker did is read from its event stream (engine.events), which every executor leaves in
the job's run folder; an exit status is extra evidence where the executor has one.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from .devices import Device
from .jobs import Priority
from .spec import JobSpec


@dataclass(frozen=True)
class LaunchRequest:
    job_id: int
    spec: JobSpec
    device: Device
    gated: bool = False     # prepare now, start the first batch only on release()
    urgent: bool = False    # may use the warm standby worker
    priority: Priority = Priority.NORMAL   # a cluster executor maps it to a partition or QOS
    route: str | None = None  # a cluster's placement (engine.cluster_policy); None: the class's own
    order: int | None = None  # place among the pool's waiting jobs (0 = next): a cluster keeps Cutline's order


@dataclass
class WorkerHandle:
    """An executor's reference to one running worker. `record` is what the store keeps so a
    restarted engine can find the worker again; its content belongs to the executor."""

    job_id: int
    record: dict[str, Any]
    gated: bool = False
    detail: Any = field(default=None, repr=False)   # executor-private (a Popen, a Slurm job id, ...)


@dataclass(frozen=True)
class WorkerExit:
    returncode: int | None   # None when the executor cannot know it (an adopted worker)


STOP_REQUEUED, STOP_CANCELLED, STOP_ENDED, STOP_UNKNOWN = "requeued", "cancelled", "ended", "unknown"


class ExecutorError(RuntimeError):
    """The executor could not do what was asked (could not start a process, cluster refused).
    `retryable`: the job should stay queued and be tried again (a cluster that is down), rather
    than fail (a run folder that cannot be written). `ambiguous`: it may have been done all the
    same (a cluster command that timed out). `unknown_job`: the cluster does not know that job."""

    def __init__(self, message: str, retryable: bool = False, *, ambiguous: bool = False,
                 unknown_job: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.ambiguous = ambiguous
        self.unknown_job = unknown_job


class Executor(abc.ABC):
    name: str = "executor"
    #: True for a cluster scheduler (Slurm): the engine hands it every queued job at once and the
    #: cluster decides when each runs and whom it preempts. False: the engine's policy decides.
    self_scheduling: bool = False

    @abc.abstractmethod
    def launch(self, request: LaunchRequest) -> WorkerHandle: ...

    @abc.abstractmethod
    def release(self, handle: WorkerHandle) -> None:
        """A gated worker may start its first batch now (its device is free)."""

    @abc.abstractmethod
    def stop(self, handle: WorkerHandle) -> None:
        """Ask the worker to finish its batch, checkpoint and exit resumable."""

    @abc.abstractmethod
    def checkpoint(self, handle: WorkerHandle) -> None:
        """Ask for a safety checkpoint; the worker keeps training."""

    @abc.abstractmethod
    def kill(self, handle: WorkerHandle) -> None:
        """End the worker now (its last checkpoint stays valid)."""

    @abc.abstractmethod
    def poll(self, handle: WorkerHandle) -> WorkerExit | None:
        """None while the worker lives; its exit once it has ended."""

    @abc.abstractmethod
    def adopt(self, job_id: int, run_dir: str, record: dict[str, Any] | None) -> WorkerHandle | None:
        """After an engine restart: a handle on the job's worker if it is still alive, else None."""

    def cancel(self, handle: WorkerHandle) -> None:
        """End a worker that has stopped at the engine's request, for good (a cluster would
        otherwise requeue it). Locally a stopped worker has simply exited."""

    def stop_cause(self, handle: WorkerHandle, final: bool = False) -> str | None:
        """Why a self-scheduling cluster stopped a worker the engine did not ask to stop:
        STOP_REQUEUED (it preempted the job and will run the same cluster job again),
        STOP_CANCELLED (someone cancelled it on the cluster, outside Cutline), STOP_ENDED (it left
        the cluster some other way), STOP_UNKNOWN (it has left and the cluster no longer knows it),
        or None while the cluster cannot tell yet. `final`: the job has left the cluster's queue,
        so an answer is needed now."""
        return STOP_REQUEUED

    def update_route(self, handle: WorkerHandle, route: str) -> str | None:
        """A job's placement changed while the executor holds it: its class changed, the daily cap
        ran out, it became protected (a cluster moves it between partitions; see
        engine.cluster_policy). Returns what happened, in words, or None when there is nothing to say."""
        return None

    def set_order(self, handle: WorkerHandle, order: int) -> str | None:
        """This launched job's place among the pool's waiting jobs changed (0 = next: priority class,
        then the operator's order). A cluster that queues jobs itself follows it. Returns what
        happened, in words, or None when there is nothing to say."""
        return None

    def waiting_reason(self, handle: WorkerHandle) -> str | None:
        """Why a launched job has not started yet, in the executor's words (a cluster's queue)."""
        return None

    def refresh(self) -> None:
        """Called at the start of every engine tick, before any poll (a cluster reads its queue)."""

    def maintain(self) -> None:
        """Called every engine tick (keep a standby warm, reap what ended)."""

    def status(self) -> dict[str, Any]:
        return {"executor": self.name}

    def close(self) -> None:
        """Release the executor's own resources. Running workers are left alone."""
