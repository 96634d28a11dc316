"""Workers as Slurm batch jobs: the same queue, jumps and audit, with Slurm doing the scheduling
and the preemption on a cluster.

Each Cutline job is one `sbatch` job running the worker under `srun` (only srun steps receive the
SIGTERM that starts a preemption's grace time), with `--requeue`, the partition of its priority
class, and its GPU request. Slurm decides when it runs and whom an urgent job preempts (partition
PriorityTier with PreemptMode=REQUEUE); the preempted worker checkpoints and exits 75, which
`RequeueExit=75` turns into a requeue of the same Slurm job, which later resumes from the
checkpoint on the shared filesystem. See docs/slurm.md for the slurm.conf this relies on.

Nothing above the executor interface changes: the engine asks to launch, stop, checkpoint, kill,
poll and adopt. `self_scheduling = True` tells the engine to hand every queued job to Slurm at
once instead of running its own device policy. Tracking uses `squeue`/`scontrol` only (no
accounting database needed).
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import protocol
from .executor import (STOP_CANCELLED, STOP_ENDED, STOP_REQUEUED, STOP_UNKNOWN, Executor, ExecutorError,
                       LaunchRequest, WorkerExit, WorkerHandle)
from .cluster_policy import ROUTE_PROTECTED, ROUTE_URGENT_NO_PREEMPT

REPO_ROOT = Path(__file__).resolve().parents[1]
ALIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "PREEMPTED", "STOPPED"}
REQUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
GONE = "GONE"  # not in squeue any more (ended, or purged after MinJobAge)
# Routes (engine.cluster_policy) -> partitions. "protected" is a partition nothing preempts; with
# none configured, protection and the daily cap cannot hold on the cluster, and the jobs say so.
DEFAULT_PARTITIONS = {"urgent": "high", "high": "low", "normal": "low", "low": "low", ROUTE_PROTECTED: None,
                      ROUTE_URGENT_NO_PREEMPT: None}
COMMAND_TIMEOUT_S = 15


class SlurmExecutor(Executor):
    name = "slurm"
    self_scheduling = True

    def __init__(self, home: Path, config_dir: Path, *, partitions: dict[str, str] | None = None,
                 cpus_per_task: int | None = None, gpus_per_job: int = 0, extra_sbatch_args: list[str] | None = None,
                 env: dict[str, str] | None = None, worker_env: dict[str, str] | None = None) -> None:
        self.home = Path(home)
        self.config_dir = Path(config_dir)
        self.partitions = {**DEFAULT_PARTITIONS, **(partitions or {})}
        self.cpus_per_task = cpus_per_task
        self.gpus_per_job = gpus_per_job
        self.extra_sbatch_args = list(extra_sbatch_args or [])
        self.env = {**os.environ, **(env or {})}       # SLURM_CONF and friends for the client commands
        self.worker_env = dict(worker_env or {})
        self.note = "not contacted yet"
        # Job names unique to this home: a lost sbatch answer (timeout, engine crash) is found again
        # by name instead of being submitted twice.
        self.name_prefix = f"cutline-{hashlib.sha1(str(self.home.resolve()).encode()).hexdigest()[:8]}-"
        self._states: dict[str, tuple[str, str]] = {}   # slurm id -> (state, reason), one squeue per tick
        self._states_ok = False
        self._fresh: set[str] = set()                   # submitted since the last squeue

    # ------------------------------------------------------------------ slurm commands

    def _run(self, args: list[str], what: str) -> str:
        try:
            done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except FileNotFoundError:
            raise ExecutorError(f"Slurm is not installed here ({args[0]} not found)", retryable=True) from None
        except subprocess.TimeoutExpired:
            raise ExecutorError(f"Slurm did not answer {what} within {COMMAND_TIMEOUT_S} s (is slurmctld up?)",
                                retryable=True) from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            error = ExecutorError(f"Slurm refused {what}: {message[-1] if message else f'exit {done.returncode}'}",
                                  retryable=True)
            error.unknown_job = "Invalid job id" in (done.stderr or "")
            raise error
        self.note = "reachable"
        return done.stdout

    def partition_for(self, route: str) -> tuple[str, str | None]:
        """The partition for a route, and a note when the cluster cannot honour the route fully."""
        if route == ROUTE_PROTECTED:
            if self.partitions[ROUTE_PROTECTED]:
                return self.partitions[ROUTE_PROTECTED], None
            return self.partitions["low"], ("no protected partition is configured (slurm_partitions: protected), "
                                            "so Slurm may preempt it again")
        if route == ROUTE_URGENT_NO_PREEMPT:
            # Not preempting, and not preemptible either: a later urgent job must not preempt it.
            partition = self.partitions[ROUTE_URGENT_NO_PREEMPT] or self.partitions[ROUTE_PROTECTED]
            if partition:
                return partition, None
            fallback = self.partitions["high"]
            return fallback, ("no protected partition is configured (slurm_partitions: protected): it waits in "
                              f"partition {fallback}, where a later urgent job may preempt it")
        return self.partitions[route], None

    # ------------------------------------------------------------------ launch

    def launch(self, request: LaunchRequest) -> WorkerHandle:
        run_dir = Path(request.spec.run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            spec_path = run_dir / protocol.SPEC_FILE
            request.spec.save(spec_path)
            script = run_dir / "slurm-job.sh"
            script.write_text(self._script(request, spec_path))
        except OSError as e:
            raise ExecutorError(f"could not write the Slurm job into {run_dir}: {e}") from e
        name = f"{self.name_prefix}{request.job_id}"
        route = request.route or request.priority.label
        partition, _ = self.partition_for(route)
        args = ["sbatch", "--parsable", f"--job-name={name}",
                f"--partition={partition}", "--requeue", "--open-mode=append",
                f"--output={run_dir / protocol.LOG_FILE}", "--nodes=1", "--ntasks=1"]
        if self.cpus_per_task:
            args.append(f"--cpus-per-task={self.cpus_per_task}")
        if request.device.kind == "gpu" or self.gpus_per_job:
            args.append(f"--gpus={max(1, self.gpus_per_job)}")
        args += self.extra_sbatch_args + [str(script)]
        try:
            slurm_id = self._run(args, "the job (sbatch)").strip().split(";")[0]
        except ExecutorError:
            slurm_id = self._find_by_name(name)  # it may have been accepted before the answer was lost
            if slurm_id is None:
                raise
        self._fresh.add(slurm_id)
        record = {"executor": "slurm", "slurm_job_id": slurm_id, "partition": partition, "route": route}
        return WorkerHandle(job_id=request.job_id, record=record, gated=False, detail=slurm_id)

    def _find_by_name(self, name: str) -> str | None:
        try:
            out = self._run(["squeue", "-h", f"--name={name}", "-o", "%i"], "squeue --name").split()
        except ExecutorError:
            return None
        return out[-1] if out else None

    def _script(self, request: LaunchRequest, spec_path: Path) -> str:
        env = protocol.worker_environment({}, str(self.config_dir))
        env["PYTHONPATH"] = str(REPO_ROOT)
        env.update(self.worker_env)
        exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        return f"""#!/bin/bash
# Cutline job {request.job_id}: written by Cutline's Slurm executor. A requeue re-runs this script;
# the worker then resumes from weights/resume.pt at the exact batch where it stopped.
{exports}
cd {shlex.quote(str(REPO_ROOT))}
# srun: only job steps get the SIGTERM that starts a preemption's grace time. The worker exits
# {protocol.EXIT_PREEMPTED} after its checkpoint, which RequeueExit turns into a requeue.
exec srun --kill-on-bad-exit=1 {shlex.quote(sys.executable)} -m engine.worker {shlex.quote(str(spec_path))}
"""

    # ------------------------------------------------------------------ control

    def release(self, handle: WorkerHandle) -> None:
        handle.gated = False  # Slurm jobs are never gated: Slurm starts them when their resources are free

    def stop(self, handle: WorkerHandle) -> None:
        state, _ = self.slurm_state(handle)
        if state == "PENDING":
            self.cancel(handle)  # nothing to checkpoint yet: a pending job simply leaves the queue
        else:
            self._signal(handle, "TERM")

    def checkpoint(self, handle: WorkerHandle) -> None:
        self._signal(handle, "USR1")

    def kill(self, handle: WorkerHandle) -> None:
        self.cancel(handle)

    def cancel(self, handle: WorkerHandle) -> None:
        """End the Slurm job for good (no requeue): after a stop the engine asked for itself."""
        try:
            self._run(["scancel", self._id(handle)], "scancel")
        except ExecutorError:
            pass  # already gone

    def _signal(self, handle: WorkerHandle, signal_name: str) -> None:
        try:  # job steps only (the worker under srun), not the batch shell
            self._run(["scancel", f"--signal={signal_name}", self._id(handle)], f"scancel --signal={signal_name}")
        except ExecutorError:
            pass  # pending or gone: nothing to signal

    @staticmethod
    def _id(handle: WorkerHandle) -> str:
        return str(handle.record.get("slurm_job_id"))

    def refresh(self) -> None:
        """One squeue for all of this home's jobs, at the start of each engine tick; the rest of
        the tick (and the console's waiting reasons) read this, so a hung slurmctld costs one
        timeout per tick, not one per job."""
        try:
            out = self._run(["squeue", "-h", "-o", "%i|%T|%r|%j"], "squeue")
        except ExecutorError as e:
            self.note = str(e)
            self._states_ok = False
            return
        states = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4 and parts[3].startswith(self.name_prefix):
                states[parts[0]] = (parts[1], parts[2])
        self._states, self._states_ok, self._fresh = states, True, set()

    def slurm_state(self, handle: WorkerHandle) -> tuple[str | None, str]:
        """(state, reason) from the last squeue; None when that squeue failed; GONE once the job has
        left the queue (ended, or purged)."""
        job_id = self._id(handle)
        if not self._states_ok:
            return None, self.note
        if job_id in self._states:
            return self._states[job_id]
        if job_id in self._fresh:
            return "PENDING", "just submitted"
        return GONE, ""

    def poll(self, handle: WorkerHandle) -> WorkerExit | None:
        state, _reason = self.slurm_state(handle)
        if state is None or state in ALIVE_STATES:
            return None  # alive, or cannot tell now: ask again next tick, never guess that it ended
        return WorkerExit(self._exit_code(handle))

    def _exit_code(self, handle: WorkerHandle) -> int | None:
        """The worker's exit status when Slurm ran it to completion; None otherwise (cancelled,
        node failure, purged): then the event stream alone says how it ended."""
        try:
            fields = self._job_fields(handle)
        except ExecutorError:
            return None
        if fields.get("JobState") not in ("COMPLETED", "FAILED"):
            return None
        try:
            status, signal_number = (int(x) for x in fields.get("ExitCode", "").split(":"))
        except ValueError:
            return None
        return -signal_number if signal_number else status

    def stop_cause(self, handle: WorkerHandle, final: bool = False) -> str | None:
        """Measured on slurm 22.05: a preempted job stays RUNNING through its grace time and is
        PENDING again (same id) once the worker exits 75; `scancel` makes it COMPLETING, then
        CANCELLED, at once."""
        try:
            fields = self._job_fields(handle)
        except ExecutorError as e:
            if not final:
                return None  # cannot ask now: next tick
            # Purged from slurmctld's memory (MinJobAge) while Cutline was away: no one can say why.
            return STOP_UNKNOWN if getattr(e, "unknown_job", False) else STOP_ENDED
        state = fields.get("JobState", "")
        if state == "CANCELLED":
            return STOP_CANCELLED
        if state in REQUEUED_STATES:
            return STOP_REQUEUED
        if state in ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING") and not final:
            return None  # still in its grace time or its epilog: next tick
        return STOP_ENDED

    def _job_fields(self, handle: WorkerHandle) -> dict[str, str]:
        out = self._run(["scontrol", "-o", "show", "job", self._id(handle)], "scontrol show job")
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def adopt(self, job_id: int, run_dir: str, record: dict[str, Any] | None) -> WorkerHandle | None:
        record = dict(record or {"executor": "slurm"})
        if not record.get("slurm_job_id"):
            # Submitted, but the engine died before recording the id: find it by its unique name.
            found = self._find_by_name(f"{self.name_prefix}{job_id}")
            if found is None:
                return None
            record.update(slurm_job_id=found)
        handle = WorkerHandle(job_id=job_id, record=record, gated=False, detail=record["slurm_job_id"])
        if not self._states_ok:
            self.refresh()
        state, _ = self.slurm_state(handle)
        return handle if state is None or state in ALIVE_STATES else None  # down: follow it, never duplicate

    def update_route(self, handle: WorkerHandle, route: str) -> str | None:
        """A new route moves a pending job to its partition; a running one keeps its place (Slurm
        does not move running jobs). Returns what happened, in words."""
        partition, caveat = self.partition_for(route)
        if handle.record.get("partition") == partition:
            handle.record["route"] = route
            return caveat
        state, _ = self.slurm_state(handle)
        if state != "PENDING":
            return f"Slurm job {self._id(handle)} is {state or 'unreachable'}: it keeps partition {handle.record.get('partition')}"
        self._run(["scontrol", "update", f"JobId={self._id(handle)}", f"Partition={partition}"], "scontrol update")
        handle.record.update(partition=partition, route=route)
        return f"moved to partition {partition}" + (f"; {caveat}" if caveat else "")

    def move_up(self, handle: WorkerHandle) -> str:
        """The operator moved this job up in Cutline's queue: ask Slurm to run it before the user's
        other pending jobs (`scontrol top`). Clusters may not allow it; then say so."""
        state, _ = self.slurm_state(handle)
        if state != "PENDING":
            return f"Slurm job {self._id(handle)} is {state or 'unreachable'}: its order no longer matters"
        try:
            self._run(["scontrol", "top", self._id(handle)], "scontrol top")
        except ExecutorError as e:
            return f"this cluster does not let Cutline reorder it ({e}); Slurm's own priority decides"
        return f"moved to the top of its partition in Slurm (scontrol top {self._id(handle)})"

    def waiting_reason(self, handle: WorkerHandle) -> str | None:
        state, reason = self.slurm_state(handle)
        if state is None:
            return f"Slurm does not answer: {reason}"
        if state == "PENDING":
            note = "".join(f"; {handle.record[k]}" for k in ("placement", "note") if handle.record.get(k))
            return (f"pending in Slurm job {self._id(handle)} ({reason or 'no reason given'}), "
                    f"partition {handle.record.get('partition')}{note}")
        return None

    def status(self) -> dict[str, Any]:
        return {"executor": self.name, "standby": "off (Slurm)", "standby_ready": False, "slurm": self.note}
