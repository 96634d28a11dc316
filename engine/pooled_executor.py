"""Local devices and cluster pools side by side, behind the one executor interface the engine uses.

Launches go to the pool named by the job's device (a cluster pool is one pseudo-device whose id is
the pool's name, e.g. "slurm"); everything after a launch goes to the executor that made the
worker, named in its handle's record. The engine's own policy schedules the local devices; a
cluster pool schedules itself (its executor's `self_scheduling`).
"""
from __future__ import annotations

from typing import Any

from .executor import Executor, LaunchRequest, WorkerExit, WorkerHandle


class PooledExecutor(Executor):
    name = "pooled"

    def __init__(self, local: Executor, pools: dict[str, Executor] | None = None) -> None:
        self.local = local
        self.pools = dict(pools or {})

    def for_record(self, record: dict[str, Any] | None) -> Executor:
        name = (record or {}).get("executor")
        if not name or name == self.local.name:
            return self.local
        if name not in self.pools:
            # Made by a pool this engine was started without (Slurm disabled since): never treat
            # that worker as lost or local; follow it blindly until the pool is configured again.
            self.pools[name] = MissingPool(name)
        return self.pools[name]

    def for_handle(self, handle: WorkerHandle) -> Executor:
        return self.for_record(handle.record)

    def is_cluster(self, handle_or_record: WorkerHandle | dict | None) -> bool:
        record = handle_or_record.record if isinstance(handle_or_record, WorkerHandle) else handle_or_record
        return self.for_record(record).self_scheduling

    def launch(self, request: LaunchRequest) -> WorkerHandle:
        return self.pools.get(request.device.id, self.local).launch(request)

    def release(self, handle: WorkerHandle) -> None:
        self.for_handle(handle).release(handle)

    def stop(self, handle: WorkerHandle) -> None:
        self.for_handle(handle).stop(handle)

    def checkpoint(self, handle: WorkerHandle) -> None:
        self.for_handle(handle).checkpoint(handle)

    def kill(self, handle: WorkerHandle) -> None:
        self.for_handle(handle).kill(handle)

    def cancel(self, handle: WorkerHandle) -> None:
        self.for_handle(handle).cancel(handle)

    def poll(self, handle: WorkerHandle) -> WorkerExit | None:
        return self.for_handle(handle).poll(handle)

    def stop_cause(self, handle: WorkerHandle, final: bool = False) -> str | None:
        return self.for_handle(handle).stop_cause(handle, final)

    def adopt(self, job_id: int, run_dir: str, record: dict[str, Any] | None) -> WorkerHandle | None:
        return self.for_record(record).adopt(job_id, run_dir, record)

    def update_route(self, handle: WorkerHandle, route: str) -> str | None:
        return self.for_handle(handle).update_route(handle, route)

    def waiting_reason(self, handle: WorkerHandle) -> str | None:
        return self.for_handle(handle).waiting_reason(handle)

    def set_order(self, handle: WorkerHandle, order: int) -> str | None:
        return self.for_handle(handle).set_order(handle, order)

    def refresh(self) -> None:
        self.local.refresh()
        for pool in self.pools.values():
            pool.refresh()

    def maintain(self) -> None:
        self.local.maintain()
        for pool in self.pools.values():
            pool.maintain()

    def status(self) -> dict[str, Any]:
        status = dict(self.local.status())
        for name, pool in self.pools.items():
            status[name] = pool.status()
        return status

    def close(self) -> None:
        self.local.close()
        for pool in self.pools.values():
            pool.close()


class MissingPool(Executor):
    """Stands in for a pool named in a worker record but not configured now: reports its workers
    alive (they may well be, on the cluster) and does nothing to them."""

    self_scheduling = True

    def __init__(self, name: str) -> None:
        self.name = name

    def launch(self, request: LaunchRequest) -> WorkerHandle:
        from .executor import ExecutorError

        raise ExecutorError(f"pool {self.name} is not configured", retryable=True)

    def release(self, handle: WorkerHandle) -> None: ...
    def stop(self, handle: WorkerHandle) -> None: ...
    def checkpoint(self, handle: WorkerHandle) -> None: ...
    def kill(self, handle: WorkerHandle) -> None: ...

    def poll(self, handle: WorkerHandle) -> WorkerExit | None:
        return None

    def adopt(self, job_id: int, run_dir: str, record: dict[str, Any] | None) -> WorkerHandle | None:
        return WorkerHandle(job_id=job_id, record=dict(record or {}), gated=False)

    def waiting_reason(self, handle: WorkerHandle) -> str | None:
        return f"in pool {self.name}, which is not configured now: enable it again to follow this job"

    def status(self) -> dict[str, Any]:
        return {self.name: "not configured (its jobs are followed blindly)"}
