"""Local devices and cluster pools side by side, behind the one executor interface the engine uses.

Launches go to the pool named by the job's device (a cluster pool is one pseudo-device whose id is
the pool's name, e.g. "slurm"); everything after a launch goes to the executor that made the
worker, named in its handle's record. The engine's own policy schedules the local devices; a
cluster pool schedules itself (its executor's `self_scheduling`).
"""
from __future__ import annotations

from typing import Any

from .executor import Executor, LaunchRequest, WorkerExit, WorkerHandle
from .jobs import Priority


class PooledExecutor(Executor):
    name = "pooled"

    def __init__(self, local: Executor, pools: dict[str, Executor] | None = None) -> None:
        self.local = local
        self.pools = dict(pools or {})

    def for_record(self, record: dict[str, Any] | None) -> Executor:
        name = (record or {}).get("executor")
        return self.pools.get(name, self.local) if name and name != self.local.name else self.local

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

    def adopt(self, job_id: int, run_dir: str, record: dict[str, Any] | None) -> WorkerHandle | None:
        return self.for_record(record).adopt(job_id, run_dir, record)

    def update_priority(self, handle: WorkerHandle, priority: Priority) -> str | None:
        return self.for_handle(handle).update_priority(handle, priority)

    def waiting_reason(self, handle: WorkerHandle) -> str | None:
        return self.for_handle(handle).waiting_reason(handle)

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
