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
import threading
import time
from pathlib import Path
from typing import Any

from . import protocol
from .executor import (STOP_CANCELLED, STOP_ENDED, STOP_REQUEUED, STOP_UNKNOWN, Executor, ExecutorError,
                       LaunchRequest, WorkerExit, WorkerHandle)
from .cluster_policy import ROUTE_PROTECTED, ROUTE_URGENT_NO_PREEMPT

REPO_ROOT = Path(__file__).resolve().parents[1]
# PREEMPTED is not here: it is final where a partition cancels its victims (PreemptMode=CANCEL); with
# REQUEUE the job shows PENDING again. SPECIAL_EXIT is a requeue held by the cluster (RequeueExitHold).
ALIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED", "SPECIAL_EXIT"}
REQUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT"}
WAITING_STATES = REQUEUED_STATES  # queued in Slurm, no worker running: a stop is a cancel
# Written into the run folder before Cutline stops a cluster job (pause, cancel): the batch script
# then ends the job instead of letting RequeueExit requeue it, even if Cutline is closed by then.
STOP_MARKER = "stop-requested"
GONE = "GONE"  # not in squeue any more (ended, or purged after MinJobAge)
# Routes (engine.cluster_policy) -> partitions. "protected" is a partition nothing preempts; with
# none configured, protection and the daily cap cannot hold on the cluster, and the jobs say so.
DEFAULT_PARTITIONS = {"urgent": "high", "high": "low", "normal": "low", "low": "low", ROUTE_PROTECTED: None,
                      ROUTE_URGENT_NO_PREEMPT: None}
COMMAND_TIMEOUT_S = 15
SQUEUE_EVERY_S = 1.0  # how often the queue is read (in the background) while the engine runs
# A pending job's nice is its place in Cutline's order times this step: far more than the priority
# Slurm itself gives by submission order (priority/basic lowers it by 1 per job submitted), so
# Cutline's order wins; small enough that 100,000 places stay within Slurm's nice range (2^31).
SLOW_ANSWER_S = 2.0  # a squeue answers in milliseconds; one this late means slurmctld is in trouble
NICE_STEP = 10_000
MAX_PLACE = 100_000


def _still_queued_or_running(state: str) -> bool:
    """A job of this state will (still) run: alive and not on its way out."""
    return state in ALIVE_STATES and state != "COMPLETING"


def nice_for(place: int) -> int:
    return min(place, MAX_PLACE) * NICE_STEP


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
        self._states: dict[str, tuple[str, str, str]] = {}  # slurm id -> (state, reason, name), one squeue a tick
        self._states_ok = False
        self._fresh: dict[str, float] = {}              # slurm id -> when submitted (monotonic), until squeue sees it
        self._squeue_lock = threading.Lock()
        self._squeue_thread: threading.Thread | None = None
        self._squeue_answer: tuple | None = None        # the background squeue's answer, not taken yet
        self._squeue_started = float("-inf")

    # ------------------------------------------------------------------ slurm commands

    def _run(self, args: list[str], what: str) -> str:
        try:
            done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except FileNotFoundError:
            raise ExecutorError(f"Slurm is not installed here ({args[0]} not found)", retryable=True) from None
        except subprocess.TimeoutExpired:
            raise ExecutorError(f"Slurm did not answer {what} within {COMMAND_TIMEOUT_S} s (is slurmctld up?)",
                                retryable=True, ambiguous=True) from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            # Slurm's own MessageTimeout: the controller may have taken the request all the same.
            timed_out = "timed out" in (done.stderr or "").lower()
            raise ExecutorError(f"Slurm refused {what}: {message[-1] if message else f'exit {done.returncode}'}",
                                retryable=True, ambiguous=timed_out,
                                unknown_job="Invalid job id" in (done.stderr or ""))
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
        name = f"{self.name_prefix}{request.job_id}"
        route = request.route or request.priority.label
        partition, _ = self.partition_for(route)
        record = {"executor": "slurm", "partition": partition, "route": route, "run_dir": str(run_dir)}
        if not self._states_ok:
            self._await_squeue()
        waited = self._squeue_waiting_s()
        # Not known: an earlier sbatch may have been accepted with its answer lost, and a new one could
        # run the job twice. Slow: the controller is in trouble, and an sbatch now would hold up the
        # engine (and the local devices' jumps) for Slurm's whole MessageTimeout.
        if not self._states_ok or waited > SLOW_ANSWER_S:
            why = f"no answer to squeue for {waited:.0f} s" if waited else self.note
            raise ExecutorError(f"Slurm does not answer ({why}); not submitting until it does", retryable=True)
        existing = self._alive_by_name(name)
        if existing is not None:  # submitted before (answer lost, engine restarted): follow that one
            record["slurm_job_id"] = existing
            return WorkerHandle(job_id=request.job_id, record=record, gated=False, detail=existing)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / STOP_MARKER).unlink(missing_ok=True)  # a resumed job runs, and requeues, again
            spec_path = run_dir / protocol.SPEC_FILE
            request.spec.save(spec_path)
            script = run_dir / "slurm-job.sh"
            script.write_text(self._script(request, spec_path, run_dir))
        except OSError as e:
            raise ExecutorError(f"could not write the Slurm job into {run_dir}: {e}") from e
        # --chdir: nothing Slurm writes lands in the engine's working folder. Paths are escaped for
        # Slurm's %-patterns. singleton: never two jobs of this name at once, whatever happens.
        output = str(run_dir / protocol.LOG_FILE).replace("\\", "\\\\").replace("%", "%%")
        args = ["sbatch", "--parsable", f"--job-name={name}", f"--chdir={run_dir}", "--dependency=singleton",
                f"--partition={partition}", "--requeue", "--open-mode=append",
                f"--output={output}", "--nodes=1", "--ntasks=1"]
        if request.order is not None:
            record["nice"] = nice_for(request.order)
            args.append(f"--nice={record['nice']}")
        if self.cpus_per_task:
            args.append(f"--cpus-per-task={self.cpus_per_task}")
        if request.device.kind == "gpu" or self.gpus_per_job:
            args.append(f"--gpus={max(1, self.gpus_per_job)}")
        args += self.extra_sbatch_args + [str(script)]
        try:
            slurm_id = self._run(args, "the job (sbatch)").strip().split(";")[0]
        except ExecutorError as e:
            if not e.ambiguous:
                raise  # refused: nothing was queued
            slurm_id = self._find_by_name(name)  # it may have been accepted before the answer was lost
            if slurm_id is None:
                self._states_ok = False  # do not submit again before a squeue has looked for it
                raise
        self._fresh[slurm_id] = time.monotonic()
        record["slurm_job_id"] = slurm_id
        return WorkerHandle(job_id=request.job_id, record=record, gated=False, detail=slurm_id)

    def _alive_by_name(self, name: str) -> str | None:
        """A job of this name in the last squeue that has not ended (newest first)."""
        alive = [job_id for job_id, (state, _reason, job_name) in self._states.items()
                 if job_name == name and _still_queued_or_running(state)]
        return max(alive, key=lambda i: int(i) if i.isdigit() else 0) if alive else None

    def _find_by_name(self, name: str) -> str | None:
        try:
            out = self._run(["squeue", "-h", "-a", f"--name={name}", "-o", "%i|%T"], "squeue --name")
        except ExecutorError:
            return None
        alive = [line.split("|")[0] for line in out.split()
                 if "|" in line and _still_queued_or_running(line.split("|")[1])]
        return alive[-1] if alive else None

    def _script(self, request: LaunchRequest, spec_path: Path, run_dir: Path) -> str:
        env = protocol.worker_environment({}, str(self.config_dir))
        env["PYTHONPATH"] = str(REPO_ROOT)
        env.update(self.worker_env)
        exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        marker = shlex.quote(str(run_dir / STOP_MARKER))
        return f"""#!/bin/bash
# Cutline job {request.job_id}: written by Cutline's Slurm executor. A requeue re-runs this script;
# the worker then resumes from weights/resume.pt at the exact batch where it stopped.
{exports}
cd {shlex.quote(str(REPO_ROOT))}
# srun: only job steps get the SIGTERM that starts a preemption's grace time. The worker exits
# {protocol.EXIT_PREEMPTED} after its checkpoint, which RequeueExit turns into a requeue -- unless Cutline
# asked it to stop (pause, cancel): then the job ends here and Slurm does not run it again.
srun --kill-on-bad-exit=1 {shlex.quote(sys.executable)} -m engine.worker {shlex.quote(str(spec_path))}
status=$?
if [ -e {marker} ]; then exit 0; fi
exit $status
"""

    # ------------------------------------------------------------------ control

    def release(self, handle: WorkerHandle) -> None:
        handle.gated = False  # Slurm jobs are never gated: Slurm starts them when their resources are free

    def stop(self, handle: WorkerHandle) -> None:
        """Cutline's own stop (pause, cancel; Slurm does its own preemptions): a waiting job leaves
        the queue; a running one checkpoints, and its batch script ends the job (STOP_MARKER)."""
        state, _ = self.slurm_state(handle)
        if state in WAITING_STATES:
            self.cancel(handle)  # nothing to checkpoint yet: a pending job simply leaves the queue
            return
        run_dir = handle.record.get("run_dir")
        if run_dir:
            try:
                (Path(run_dir) / STOP_MARKER).write_text("stopped by Cutline\n")
            except OSError:
                pass  # then the engine ends the requeued job itself, as before
        self._signal(handle, "TERM")

    def checkpoint(self, handle: WorkerHandle) -> None:
        try:
            self._signal(handle, "USR1")
        except ExecutorError:
            pass  # a safety checkpoint can wait for the next timer

    def kill(self, handle: WorkerHandle) -> None:
        self.cancel(handle)

    def cancel(self, handle: WorkerHandle) -> None:
        """End the Slurm job for good (no requeue). Raises ExecutorError when Slurm did not take it
        (unreachable): the engine tries again; a job Slurm no longer knows is already gone."""
        self._run_on_job(["scancel", self._id(handle)], "scancel")

    def _signal(self, handle: WorkerHandle, signal_name: str) -> None:
        # job steps only (the worker under srun), not the batch shell
        self._run_on_job(["scancel", f"--signal={signal_name}", self._id(handle)], f"scancel --signal={signal_name}")

    def _run_on_job(self, args: list[str], what: str) -> None:
        try:
            self._run(args, what)
        except ExecutorError as e:
            if not e.unknown_job:
                raise

    @staticmethod
    def _id(handle: WorkerHandle) -> str:
        return str(handle.record.get("slurm_job_id"))

    def refresh(self, wait: bool = False) -> None:
        """Called at the start of each engine tick: take the newest squeue answer (one squeue for all of
        this home's jobs; the rest of the tick and the console's waiting reasons read it), and start the
        next one in the background at most every SQUEUE_EVERY_S. So a slurmctld that hangs never holds
        up the engine's tick, and with it the local devices' preemptions. `wait`: ask now and wait."""
        if wait:
            self._apply_squeue(*self._squeue())
            return
        with self._squeue_lock:
            if time.monotonic() - self._squeue_started >= SQUEUE_EVERY_S:
                self._start_squeue_locked()
        self._take_squeue_answer()

    def _take_squeue_answer(self) -> None:
        with self._squeue_lock:
            answer, self._squeue_answer = self._squeue_answer, None
        if answer is not None:
            self._apply_squeue(*answer)

    def _start_squeue_locked(self) -> None:
        """Start a background squeue unless one is running (the caller holds _squeue_lock)."""
        if self._squeue_thread is not None and self._squeue_thread.is_alive():
            return
        self._squeue_started = time.monotonic()
        self._squeue_thread = threading.Thread(target=self._squeue_in_background, name="slurm-squeue", daemon=True)
        self._squeue_thread.start()

    def _await_squeue(self) -> None:
        """Slurm's queue is not known (the engine just started, or the last squeue failed): give the
        background squeue up to SLOW_ANSWER_S from its start to answer. A healthy controller answers
        in milliseconds, so the first jobs are submitted at once; a hung one costs at most that."""
        with self._squeue_lock:
            if self._squeue_answer is None:
                self._start_squeue_locked()
            thread = self._squeue_thread
            remaining = SLOW_ANSWER_S - (time.monotonic() - self._squeue_started)
        if thread is not None and remaining > 0:
            thread.join(remaining)
        self._take_squeue_answer()

    def _squeue_waiting_s(self) -> float:
        """How long the background squeue now running has waited for its answer (0 if none runs)."""
        with self._squeue_lock:
            running = self._squeue_thread is not None and self._squeue_thread.is_alive()
            return time.monotonic() - self._squeue_started if running else 0.0

    def _squeue_in_background(self) -> None:
        answer = self._squeue()
        with self._squeue_lock:
            self._squeue_answer = answer

    def _squeue(self) -> tuple[float, dict | None, str]:
        """(when it was asked, this home's jobs or None, the error)."""
        asked = time.monotonic()
        try:
            out = self._run(["squeue", "-h", "-a", "-o", "%i|%T|%r|%j"], "squeue")  # -a: hidden partitions too
        except ExecutorError as e:
            return asked, None, str(e)
        states = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4 and parts[3].startswith(self.name_prefix):
                states[parts[0]] = (parts[1], parts[2], parts[3])
        return asked, states, ""

    def _apply_squeue(self, asked: float, states: dict | None, error: str) -> None:
        if states is None:
            self.note = error
            self._states_ok = False
            return
        self.note = "reachable"
        self._states, self._states_ok = states, True
        # Jobs submitted after this squeue was asked are not in it yet: they stay "just submitted".
        self._fresh = {job_id: at for job_id, at in self._fresh.items() if at >= asked}

    def slurm_state(self, handle: WorkerHandle) -> tuple[str | None, str]:
        """(state, reason) from the last squeue; None when that squeue failed; GONE once the job has
        left the queue (ended, or purged)."""
        job_id = self._id(handle)
        if not self._states_ok:
            return None, self.note
        if job_id in self._states:
            return self._states[job_id][:2]
        if job_id in self._fresh:
            return "PENDING", "just submitted"
        return GONE, ""

    def poll(self, handle: WorkerHandle) -> WorkerExit | None:
        state, _reason = self.slurm_state(handle)
        if state is None or state in ALIVE_STATES:
            return None  # alive, or cannot tell now: ask again next tick, never guess that it ended
        try:  # missing from squeue: make sure before calling it ended (a partition it cannot see)
            fields = self._job_fields(handle)
        except ExecutorError as e:
            if not e.unknown_job:
                return None  # Slurm does not answer: next tick
            fields = {}
        if fields.get("JobState") in ALIVE_STATES:
            return None
        return WorkerExit(self._exit_code_of(fields))

    @staticmethod
    def _exit_code_of(fields: dict[str, str]) -> int | None:
        """The worker's exit status when Slurm ran it to completion; None otherwise (cancelled,
        node failure, purged): then the event stream alone says how it ended."""
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
            return STOP_UNKNOWN if e.unknown_job else STOP_ENDED
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
            self.refresh(wait=True)
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
        if state not in WAITING_STATES:
            return f"Slurm job {self._id(handle)} is {state or 'unreachable'}: it keeps partition {handle.record.get('partition')}"
        self._run(["scontrol", "update", f"JobId={self._id(handle)}", f"Partition={partition}"], "scontrol update")
        handle.record.update(partition=partition, route=route)
        return f"moved to partition {partition}" + (f"; {caveat}" if caveat else "")

    def set_order(self, handle: WorkerHandle, order: int) -> str | None:
        """Slurm starts a partition's pending jobs by priority, which `nice` lowers: each waiting job's
        nice follows its place in Cutline's order (classes first, then the operator's drag order), so
        Slurm starts them in that order. (`scontrol top` would not do: it reorders by trading nice
        values among all of the user's jobs in the partition, across Cutline's classes.)"""
        nice = nice_for(order)
        if handle.record.get("nice") == nice:
            return None
        state, _ = self.slurm_state(handle)
        if state not in WAITING_STATES:
            return None  # running (or unreachable): its place no longer matters, or next tick
        try:
            self._run(["scontrol", "update", f"JobId={self._id(handle)}", f"Nice={nice}"], "scontrol update Nice")
        except ExecutorError as e:
            return f"this cluster does not let Cutline order its pending jobs ({e}); Slurm's own priority decides"
        handle.record["nice"] = nice
        return None

    def waiting_reason(self, handle: WorkerHandle) -> str | None:
        state, reason = self.slurm_state(handle)
        if state is None:
            return f"Slurm does not answer: {reason}"
        if state in WAITING_STATES:
            note = "".join(f"; {handle.record[k]}" for k in ("placement", "note") if handle.record.get(k))
            return (f"pending in Slurm job {self._id(handle)} ({reason or 'no reason given'}), "
                    f"partition {handle.record.get('partition')}{note}")
        return None

    def status(self) -> dict[str, Any]:
        return {"executor": self.name, "standby": "off (Slurm)", "standby_ready": False, "slurm": self.note}
