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
from .spec import JobSpec


@dataclass(frozen=True)
class LaunchRequest:
    job_id: int
    spec: JobSpec
    device: Device
    gated: bool = False     # prepare now, start the first batch only on release()
    urgent: bool = False    # may use the warm standby worker


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


class ExecutorError(RuntimeError):
    """The executor could not do what was asked (could not start a process, cluster refused)."""


class Executor(abc.ABC):
    name: str = "executor"

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

    def maintain(self) -> None:
        """Called every engine tick (keep a standby warm, reap what ended)."""

    def status(self) -> dict[str, Any]:
        return {"executor": self.name}

    def close(self) -> None:
        """Release the executor's own resources. Running workers are left alone."""
