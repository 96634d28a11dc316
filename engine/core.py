"""The engine: one loop that turns the store's queue into running workers and back.

Each tick (a quarter second, or at once when woken):

1. **Observe** -- read new lines of every active job's event stream (progress, checkpoints, the
   worker's own account of how it ended) and poll the executor for exits.
2. **Settle** -- a worker that ended moves its job to finished, failed, or back to the queue (or to
   paused / cancelled when that is what its stop asked for).
3. **Stop** -- a job asked to stop (by the policy, an operator, the CLI) gets its stop request;
   one past its grace deadline is killed and resumes later from its last checkpoint.
4. **Release** -- a gated urgent worker whose device is now free starts its first batch.
5. **Decide and act** -- `policy.decide` on a snapshot; each preemption is written to the audit
   trail and the store *before* the victim is signalled, and the urgent job starts preparing (gated)
   at once, so it takes the device the moment the victim exits.

All executor calls happen on the engine thread; operators' commands arrive through the store
(`Operations`, from any thread or process) and wake the loop. Listeners receive ("job", record),
("event", {...}), ("notification", {...}) and ("engine", {...}) callbacks on the engine thread.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import cluster_policy, paths, policy, protocol, runlock
from .devices import Device, DeviceMonitor
from .events import STREAM_END, EventTail, iter_events, stream_size
from .executor import (STOP_CANCELLED, STOP_REQUEUED, STOP_UNKNOWN, Executor, ExecutorError, LaunchRequest,
                       WorkerHandle)
from .jobs import JobEvent, JobState, Priority
from .local_executor import LocalExecutor
from .pooled_executor import PooledExecutor
from .operations import ACTIVE, POOL_KIND, Operations, job_view, victim_details
from .policy import DeviceView
from .settings import EngineSettings
from .spec import JobSpec
from .store import JobRecord, StaleState, Store

log = logging.getLogger("cutline.engine")

ENGINE_LOCK_FILE = "engine.lock"
ENGINE_OPERATOR = "cutline-engine"
ASK_CLUSTER_EVERY_S = 1.0  # while a cluster has not said why it stopped a worker
FULL_DECIDE_EVERY_S = 2.0  # aging and protection change with time alone
RETRY_LAUNCH_S = 10.0      # a cluster that refused a job is asked again after this long
URGENT_JUST_STARTED_S = 60.0  # an urgent cluster job this new may be the one a cluster preemption was for


class EngineBusy(RuntimeError):
    """Another engine (a console or a headless engine) already runs on this home."""


def engine_running(home: Path) -> int | None:
    """Pid of the engine holding `home`, or None if none runs."""
    holder = runlock.held_by(Path(home) / ENGINE_LOCK_FILE)
    return None if holder is None else (holder.get("pid") or -1)


class Engine:
    def __init__(
        self,
        home: str | os.PathLike | None = None,
        *,
        cpu_slots: int = 1,
        use_nvml: bool = True,
        executor: Executor | None = None,
        pools: dict[str, Executor] | None = None,
        settings: dict[str, Any] | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.home = paths.cutline_home(home)
        self.store = Store(self.home)
        with self.store.lock:
            self.audit = self.store.audit_trail()
        if settings:
            merged = {**self.store.settings(), **settings}
            EngineSettings.from_mapping(merged)  # refuse bad values before writing any
            self.store.put_settings(settings)
        self.monitor = DeviceMonitor(cpu_slots=cpu_slots, use_nvml=use_nvml)
        self.devices: dict[str, Device] = {d.id: d for d in self.monitor.devices}
        configured = EngineSettings.from_mapping(self.store.settings())
        pools = dict(pools or {})
        if configured.slurm_enabled and "slurm" not in pools:
            from .slurm_executor import SlurmExecutor

            pools["slurm"] = SlurmExecutor(
                self.home, paths.ultralytics_config_dir(self.home), partitions=configured.slurm_partitions,
                cpus_per_task=configured.slurm_cpus_per_task, gpus_per_job=configured.slurm_gpus_per_job,
                env={"SLURM_CONF": configured.slurm_conf} if configured.slurm_conf else None, worker_env=worker_env,
            )
        # A cluster pool is one place to send jobs (a pseudo-device named after it); the cluster
        # places them on its nodes. Jobs choose it with the device preference of that name.
        self.pools = pools
        for name, pool in pools.items():
            self.devices[name] = Device(name, "gpu" if getattr(pool, "gpus_per_job", 0) else "cpu", f"{pool.name} pool", 0)
        views = [DeviceView(d.id, d.kind) for d in self.monitor.devices] + [DeviceView(n, POOL_KIND) for n in pools]
        self.ops = Operations(self.store, self.audit, views)
        self.ops.on_change = self.wake  # an operation committed in this process: act on it now
        # What this engine offers, for the CLI's checks and waiting reasons while it runs or after.
        self.store.put_meta("devices", [{"id": v.id, "kind": v.kind} for v in views])
        self.settings = self.ops.settings
        self.local = executor or LocalExecutor(
            self.home, paths.ultralytics_config_dir(self.home), cpu_slots=cpu_slots,
            warm_standby=self.settings.warm_standby, extra_env=worker_env,
        )
        self.executor = PooledExecutor(self.local, pools)
        self.handles: dict[int, WorkerHandle] = {}
        self.tails: dict[int, EventTail] = {}
        self.outcomes: dict[int, dict] = {}          # job id -> its run's last terminal event
        self.held_events: dict[int, list[dict]] = {}  # job id -> events waiting on the cluster's answer
        self._ask_cluster_after: dict[int, float] = {}  # job id -> monotonic time of the next question
        self.listeners: list[Callable[[str, Any], None]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._dirty = True
        self._last_full_decide = 0.0
        self._checkpoint_requested = False
        self._calls: deque[Callable[[], None]] = deque()
        self._retry_after: dict[int, float] = {}   # job id -> when a retryable launch failure may retry
        self._cancels_due: set[int] = set()         # stopped cluster jobs the cluster has not cancelled yet
        self._notification_seq = self.store.notifications()[-1].seq if self.store.notifications() else 0
        self.timers = None
        self.state = "stopped"
        self.closed = False  # after shutdown: the store is closed, nothing may read it
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, timers: bool = True) -> "Engine":
        self._acquire_lock()
        try:
            self.recover()
            self._start_api()
            if timers:
                from .timers import Timers

                self.timers = Timers(self)
                self.timers.start()
        except BaseException:
            self._release_lock()
            raise
        self._stop.clear()
        self.state = "running"
        self._thread = threading.Thread(target=self._loop, name="cutline-engine", daemon=True)
        self._thread.start()
        self._emit("engine", {"state": self.state})
        return self

    def shutdown(self, mode: str = "checkpoint", timeout: float | None = None) -> None:
        """`checkpoint`: every running job saves its state and goes back to the queue (it resumes at
        the next start). `detach`: workers keep training; the next start adopts them."""
        if mode not in ("checkpoint", "detach"):
            raise ValueError("shutdown mode is 'checkpoint' or 'detach'")
        if self._thread is None:
            self._close()
            return
        self.state = "stopping"  # from here on nothing new is dispatched
        if mode == "checkpoint":
            self.call_soon(self._stop_all_for_shutdown)
            deadline = time.monotonic() + (timeout if timeout is not None else self.settings.stop_grace_s + 15)
            while time.monotonic() < deadline and [j for j in self.store.jobs(set(ACTIVE)) if not self._on_cluster(j)]:
                time.sleep(0.05)
                self._wake.set()
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._thread = None
        self._close()

    def _start_api(self) -> None:
        self.api = None
        self.api_note = "off"
        if not self.settings.api_enabled:
            self.store.put_meta("api_url", None)
            return
        from .api.server import ApiServer

        try:
            self.api = ApiServer(self, self.settings.api_host, self.settings.api_port).start()
        except Exception as e:  # a busy port must not stop the scheduling; say why the API is off
            self.api_note = f"not serving: {e}"
            log.error("HTTP API %s", self.api_note)
            self.store.put_meta("api_url", None)
            return
        self.api_note = self.api.url
        self.store.put_meta("api_url", self.api.url)

    def devices_report(self) -> list[dict]:
        """Each device, its latest reading, and the job on it (for the API and the CLI)."""
        samples = {s.device_id: s for s in self.monitor.sample()}
        holders = {j.device_id: j for j in self.store.jobs(set(ACTIVE)) if j.device_id}
        out = []
        for device in self.monitor.devices:
            sample, job = samples.get(device.id), holders.get(device.id)
            out.append({
                "id": device.id, "kind": device.kind, "name": device.name,
                "reserved_for_urgent": device.id == self.settings.reserved_device,
                "utilization": sample.utilization if sample else None,
                "memory_used": sample.memory_used if sample else None,
                "memory_total": sample.memory_total if sample else device.memory_total,
                "temperature_c": sample.temperature_c if sample else None,
                "power_w": sample.power_w if sample else None,
                "pids": list(sample.pids) if sample else [],
                "job": None if job is None else {"id": job.id, "name": job.name, "priority": job.priority.label,
                                                 "state": job.state.value},
            })
        return out

    def _close(self) -> None:
        if getattr(self, "api", None) is not None:
            self.api.stop()
            self.api = None
        if self.timers is not None:
            self.timers.shutdown()
            self.timers = None
        self.executor.close()
        self.monitor.close()
        self._release_lock()
        self.state = "stopped"
        self._emit("engine", {"state": self.state})
        self.store.close()
        self.closed = True

    def _acquire_lock(self) -> None:
        try:
            self._lock_fd = runlock.take(self.home / ENGINE_LOCK_FILE)
        except runlock.Busy as e:
            raise EngineBusy(f"another Cutline engine (pid {e.holder.get('pid', '?')}) already runs on {self.home}") from None

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        self.listeners.append(listener)

    def wake(self) -> None:
        self._dirty = True
        self._wake.set()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the engine thread at the next tick."""
        self._calls.append(fn)
        self.wake()

    def request_safety_checkpoints(self) -> None:
        self._checkpoint_requested = True
        self._wake.set()

    def _emit(self, kind: str, payload: Any) -> None:
        for listener in list(self.listeners):
            try:
                listener(kind, payload)
            except Exception:  # a broken listener must never stop the engine
                log.exception("engine listener failed")

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self.last_error = None
            except Exception as e:  # keep scheduling; the error is visible in status and the log
                log.exception("engine tick failed")
                self.last_error = f"{type(e).__name__}: {e}"
            self._wake.wait(min(max(self.settings.tick_s, 0.01), 10.0))
            self._wake.clear()

    def tick(self) -> None:
        now = time.time()
        while self._calls:
            self._calls.popleft()()
        if self.store.changed():
            self._dirty = True
        self._apply_settings(self.ops.settings)  # one small SELECT: in-process changes count too
        self.executor.refresh()
        for job_id in list(self._cancels_due):
            self._cancel_on_cluster(job_id)
        self._observe()
        self._carry_out_stops(now)
        self._release_gates()
        if self._checkpoint_requested:
            self._checkpoint_requested = False
            for job_id, handle in self.handles.items():
                if self.store.job(job_id).state is JobState.RUNNING:
                    self.executor.checkpoint(handle)
        if self.state == "running" and (self._dirty or now - self._last_full_decide >= FULL_DECIDE_EVERY_S):
            self._dirty = False
            self._last_full_decide = now
            self._dispatch(now)
        self.executor.maintain()
        self._forward_notifications()

    def _apply_settings(self, new: EngineSettings) -> None:
        """Settings changed in the store (CLI, console): the ones held elsewhere follow at once."""
        old, self.settings = self.settings, new
        if new.warm_standby != old.warm_standby and isinstance(self.local, LocalExecutor):
            self.local.set_warm_standby(new.warm_standby)
        if new.safety_checkpoint_interval_s != old.safety_checkpoint_interval_s and self.timers is not None:
            self.timers.set_safety_interval(new.safety_checkpoint_interval_s)

    # ------------------------------------------------------------------ observe and settle

    def _observe(self) -> None:
        for job_id in list(self.handles):
            events = self.held_events.pop(job_id, []) + self.tails[job_id].read_new()
            if events and time.monotonic() < self._ask_cluster_after.get(job_id, 0):
                self.held_events[job_id] = events  # asked the cluster a moment ago: not every tick
            elif events:
                self._apply_events(job_id, events)
            ended = self.executor.poll(self.handles[job_id])
            if ended is not None:
                # lines written just before the exit, and any the cluster's answer held back
                events = self.held_events.pop(job_id, []) + self.tails[job_id].read_new()
                if events:
                    self._apply_events(job_id, events, final=True)
                self._settle(job_id, ended.returncode)

    def _apply_events(self, job_id: int, events: list[dict], final: bool = False) -> None:
        """Fold a worker's new events into its job. `final`: its worker has ended."""
        job = self.store.job(job_id)
        changes: dict[str, Any] = {}
        for index, event in enumerate(events):
            kind = event.get("event")
            if kind == "started":
                try:
                    started = self.store.transition(job_id, JobEvent.WORKER_STARTED, expect=JobState.STARTING,
                                                    detail=f"worker pid {event.get('pid')} started")
                except StaleState:  # stopped before it started (an operator paused it): nothing to mark
                    job = self.store.job(job_id)
                    if (job.state is JobState.RUNNING and not job.stop_target
                            and self.executor.is_cluster(self.handles.get(job_id))):
                        # Running already, and started again: the cluster killed and requeued it
                        # without its worker saying "preempted" (no checkpoint at the stop).
                        try:
                            job = self._cluster_preempted(job_id, event, checkpointed=False)
                        except StaleState:
                            job = self.store.job(job_id)
                else:
                    job = started
                    if job.preemptions or event.get("resumed"):
                        self._notify(job, "resumed", f"Your job {job.id} ({job.name}) resumed at epoch "
                                     f"{(event.get('resume_epoch') or 0) + 1}, batch {event.get('resume_batch') or 0}.")
            elif kind == "training":
                changes.update(epochs=event.get("epochs"), batches=event.get("batches_per_epoch"),
                               epoch=event.get("start_epoch"), batch=event.get("start_batch"))
            elif kind == "batch":
                epochs = changes.get("epochs", job.epochs) or 1
                nb = event.get("batches") or 1
                done = event["epoch"] * nb + event["batch"] + 1
                changes.update(epoch=event["epoch"], batch=event["batch"] + 1, batches=nb,
                               progress=min(1.0, done / (epochs * nb)))
            elif kind == "epoch":
                metrics = {k: event.get(k) for k in ("precision", "recall", "mAP50", "mAP50-95")}
                metrics["epoch"] = event.get("epoch")
                changes["metrics"] = metrics
            elif kind == "checkpoint":
                changes.update(last_checkpoint_at=event["ts"], checkpoint=event.get("path"))
            elif kind == "preempted" and job_id in self.handles and self.executor.is_cluster(self.handles[job_id]):
                if job.stop_target:  # our own stop (pause, cancel): end the cluster job, no requeue
                    self._cancel_on_cluster(job_id)  # (its batch script ends it too: STOP_MARKER)
                    self.outcomes[job_id] = event
                elif job.state.is_active:
                    restarted = any(e.get("event") == "started" for e in events[index + 1:])
                    cause = STOP_REQUEUED if restarted else self.executor.stop_cause(self.handles[job_id], final)
                    try:
                        if cause == STOP_REQUEUED:
                            job = self._cluster_preempted(job_id, event)
                    except StaleState:
                        cause = None  # an operator acted meanwhile: look again next tick
                    if cause is None:
                        # The cluster has not decided yet: keep this event and those after it, in order.
                        self.held_events[job_id] = events[index:]
                        self._ask_cluster_after[job_id] = time.monotonic() + ASK_CLUSTER_EVERY_S
                        break
                    if cause != STOP_REQUEUED:  # it will not run again by itself: settle it when it leaves the queue
                        self.outcomes[job_id] = {**event, "stop_cause": cause}
            elif kind in ("preempted", "finished", "failed"):
                self.outcomes[job_id] = event
            self._emit("event", {"job_id": job_id, **event})
        if changes:
            job = self.store.update(job_id, **changes)
        self._emit("job", job)

    def _cancel_on_cluster(self, job_id: int) -> None:
        """End a stopped cluster job for good; while the cluster does not answer, again every tick."""
        handle = self.handles.get(job_id)
        if handle is None:
            self._cancels_due.discard(job_id)
            return
        try:
            self.executor.cancel(handle)
        except ExecutorError as e:
            log.warning("job %s: could not cancel it on the cluster yet: %s", job_id, e)
            self._cancels_due.add(job_id)
        else:
            self._cancels_due.discard(job_id)

    def _settle(self, job_id: int, returncode: int | None) -> None:
        """The worker of `job_id` has ended: decide where the job goes, from what it reported.
        The read and the write are one transaction, so an operator's pause or cancel arriving at the
        same moment (another thread, the CLI) is either seen here or waits for it."""
        outcome = self.outcomes.get(job_id)
        handle = self.handles.get(job_id)
        if outcome is None and returncode is None and handle is not None and self.executor.is_cluster(handle):
            # Gone from the cluster without a word from its worker (cancelled while pending, or
            # killed before it could checkpoint): ask why before deciding (outside the transaction).
            cause = self.executor.stop_cause(handle, final=True)
            if cause in (STOP_CANCELLED, STOP_UNKNOWN):
                outcome = {"stop_cause": cause}
        with self.store.transaction():
            job = self.store.job(job_id)
            if not job.state.is_active:
                done = None
            elif returncode == protocol.EXIT_RUN_BUSY and self._follow_older_worker(job):
                return
            else:
                done = self._settle_job(job, outcome, returncode)
        self.handles.pop(job_id, None)
        self.tails.pop(job_id, None)
        self.outcomes.pop(job_id, None)
        self.held_events.pop(job_id, None)
        self._ask_cluster_after.pop(job_id, None)
        if done is not None:
            if done.state is JobState.PAUSED:
                with self.store.lock:
                    self.audit.flush_anchor()  # settling may have audited a cluster-side cancel
            self._dirty = True
            self._emit("job", done)

    def _follow_older_worker(self, job: JobRecord) -> bool:
        """This attempt found an older worker of the same job alive (after an engine crash): follow
        that one instead. It has been training since before this attempt's offset: running."""
        # The worker record names this attempt; the older worker runs where this one would have
        # (a cluster job is found by its name there; a local one by its run-folder lock).
        hint = {"executor": job.worker["executor"]} if job.worker and job.worker.get("executor") else None
        adopted = self.executor.adopt(job.id, job.run_dir, hint)
        if adopted is None:
            return False
        if job.state is JobState.STARTING:
            job = self.store.transition(job.id, JobEvent.WORKER_STARTED, expect=JobState.STARTING,
                                        detail="an older worker of this job was still running: adopted it",
                                        worker=adopted.record)
        self.handles[job.id] = adopted
        return True

    def _settle_job(self, job: JobRecord, outcome: dict | None, returncode: int | None) -> JobRecord:
        kind = outcome.get("event") if outcome else None
        if kind is None:
            kind = {protocol.EXIT_FINISHED: "finished", protocol.EXIT_PREEMPTED: "preempted",
                    protocol.EXIT_FAILED: "failed", protocol.EXIT_BAD_INPUT: "failed"}.get(returncode)
        how = protocol.describe_exit(returncode) if returncode is not None else "ended"
        now = time.time()
        released = dict(device_id=None, gated=0, stop_sent_at=None, stop_deadline=None,
                        killed_at=None, running_since=None)
        if kind == "finished":
            metrics = (outcome or {}).get("metrics") or {}
            summary = dict(job.metrics or {})
            for short, long in (("precision", "metrics/precision(B)"), ("recall", "metrics/recall(B)"),
                                ("mAP50", "metrics/mAP50(B)"), ("mAP50-95", "metrics/mAP50-95(B)")):
                if long in metrics:
                    summary[short] = metrics[long]
            done = self.store.transition(job.id, JobEvent.WORKER_FINISHED, expect=job.state, detail="worker finished",
                                         ended_at=now, progress=1.0, metrics=summary, stop_target=None, **released)
            self._notify(done, "finished", f"Your job {job.id} ({job.name}) finished"
                         + (f": mAP50-95 {summary['mAP50-95']:.3f}." if summary.get("mAP50-95") is not None else "."))
            return done
        if kind == "failed" and job.stop_target != JobState.CANCELLED.value:
            error = (outcome or {}).get("error") or f"worker {how}"
            done = self.store.transition(job.id, JobEvent.WORKER_FAILED, expect=job.state, detail=error[:500],
                                         ended_at=now, error=error, stop_target=None, **released)
            self._notify(done, "failed", f"Your job {job.id} ({job.name}) failed: {error[:300]}")
            return done
        if (outcome or {}).get("stop_cause") in (STOP_CANCELLED, STOP_UNKNOWN) and not job.stop_target:
            return self._cancelled_on_cluster(job, released, now, outcome["stop_cause"])
        target = JobState(job.stop_target) if job.stop_target else JobState.QUEUED
        lost = kind not in ("preempted", "failed") and job.killed_at is None and job.state is not JobState.PREEMPTING
        values: dict[str, Any] = dict(released, waiting_since=now, stop_target=None, stop_reason=None)
        detail = f"worker {how}" + (f"; {job.stop_reason}" if job.stop_reason else "")
        if lost:
            values["lost_workers"] = job.lost_workers + 1
            if values["lost_workers"] >= self.settings.lost_worker_limit:
                error = f"its worker was lost {values['lost_workers']} times (last: {how})"
                done = self.store.transition(job.id, JobEvent.WORKER_FAILED, expect=job.state, detail=error,
                                             ended_at=now, error=error, lost_workers=values["lost_workers"],
                                             **released)
                self._notify(done, "failed", f"Your job {job.id} ({job.name}) failed: {error}")
                return done
            detail = f"worker lost ({how}); resumes from its last checkpoint"
        if target is JobState.CANCELLED:
            values["ended_at"] = now
        return self.store.transition(job.id, JobEvent.WORKER_PREEMPTED, expect=job.state, to=target,
                                     detail=detail, **values)

    # ------------------------------------------------------------------ stop, kill, release

    def _carry_out_stops(self, now: float) -> None:
        for job in self.store.jobs({JobState.PREEMPTING}):
            handle = self.handles.get(job.id)
            if handle is None:
                continue
            if job.stop_sent_at is None:
                # Recorded first: a restarted engine must never send a second stop (a worker's
                # second SIGTERM kills it at once, mid-save); the deadline covers a lost one.
                self.store.update(job.id, stop_sent_at=now, stop_deadline=now + self.settings.stop_grace_s)
                try:
                    self.executor.stop(handle)
                except ExecutorError as e:
                    # Not delivered (a cluster that does not answer): ask again next tick, unless it may
                    # have arrived all the same (a timeout); then the deadline's kill settles it.
                    log.warning("job %s: stop not delivered: %s", job.id, e)
                    if not e.ambiguous:
                        self.store.update(job.id, stop_sent_at=None, stop_deadline=None)
            elif job.stop_deadline is not None and now >= job.stop_deadline and job.killed_at is None:
                log.warning("job %s did not stop within %g s; killing it", job.id, self.settings.stop_grace_s)
                try:
                    self.executor.kill(handle)
                except ExecutorError as e:
                    log.warning("job %s: kill not delivered (%s); trying again", job.id, e)
                    continue
                self.store.update(job.id, killed_at=now)

    def _release_gates(self) -> None:
        gated = [(job_id, h) for job_id, h in self.handles.items() if h.gated]
        if not gated:
            return
        active = self.store.jobs(set(ACTIVE))
        for job_id, handle in gated:
            job = next((j for j in active if j.id == job_id), None)
            if job is None or job.state is JobState.PREEMPTING:
                continue
            holders = [j for j in active if j.device_id == job.device_id and j.id != job_id]
            if not holders:
                self.store.update(job_id, gated=0)  # first: recovery must never kill a released worker
                self.executor.release(handle)

    # ------------------------------------------------------------------ decide and act

    def _dispatch(self, now: float) -> None:
        if self.pools:
            # A cluster pool schedules itself: hand it every job queued for it, in queue order,
            # placed where the daily cap and protection hold (the cluster picks the victims).
            rules = self.settings.rules(self.ops.preemptions_today(now))
            sent = [str(job_id) for job_id, h in self.handles.items() if h.record.get("route") == Priority.URGENT.label]
            placements = cluster_policy.place(self.ops.pool_job_views(), rules, sent_to_preempt=sent)
            waiting = [j for j in self.ops.queue()
                       if j.device_kind in self.pools and j.state in (JobState.QUEUED, JobState.STARTING)]
            order = {job.id: place for place, job in enumerate(waiting)}  # Cutline's order, for the cluster
            for job in waiting:
                if job.state is JobState.QUEUED and self._retry_after.get(job.id, 0) <= now:
                    self._start(job.id, job.device_kind, gated=False, placement=placements.get(str(job.id)),
                                order=order[job.id])
            self._follow_placements(placements, order)
        snapshot = self.ops.snapshot(now)
        decision = policy.decide(snapshot)
        for action in decision.actions:
            if isinstance(action, policy.Preempt):
                self._preempt(action, now)
            else:
                self._start(int(action.job_id), action.device_id, gated=False)

    def _preempt(self, action: policy.Preempt, now: float) -> None:
        victim = self.store.job(int(action.victim_id))
        urgent = self.store.job(int(action.for_job_id))
        jump = self._last_jump(urgent.id)
        with self.store.transaction():
            victim, urgent = self.store.job(victim.id), self.store.job(urgent.id)
            if victim.state is not JobState.RUNNING or urgent.state is not JobState.QUEUED:
                return  # changed since the snapshot (paused, cancelled, ended): decide again next tick
            entry = self.audit.append(
                "preempt",
                operator=jump["operator"] if jump else ENGINE_OPERATOR,
                reason=action.reason,
                job_id=victim.id,
                details={
                    "victim": victim_details(victim), "for_job": urgent.id, "for_job_name": urgent.name,
                    "device": action.device_id, "jump_seq": jump["seq"] if jump else None,
                    "jump_reason": jump["reason"] if jump else None,
                },
            )
            victim = self.store.transition(
                victim.id, JobEvent.PREEMPT, expect=victim.state, detail=action.reason,
                stop_target=JobState.QUEUED.value, stop_reason=f"preempted for urgent job {urgent.id}",
                preemptions=victim.preemptions + 1,
            )
            self.store.notify(victim.owner, victim.id, "preempted",
                              f"Your job {victim.id} ({victim.name}) was paused at epoch {(victim.epoch or 0) + 1}, "
                              f"batch {victim.batch or 0} for urgent job {urgent.id} ({urgent.name})"
                              + (f": {jump['reason']}" if jump else "") + ". It resumes automatically from its checkpoint.")
        with self.store.lock:
            self.audit.flush_anchor()
        log.info("audit #%s: %s", entry.seq, action.reason)
        handle = self.handles.get(victim.id)
        if handle is not None:
            self.store.update(victim.id, stop_sent_at=now, stop_deadline=now + self.settings.stop_grace_s)
            self.executor.stop(handle)
        self._emit("job", victim)
        # The urgent job prepares now, on the victim's device, and starts when the victim is gone.
        self._start(urgent.id, action.device_id, gated=True)

    def _follow_placements(self, placements: dict[str, cluster_policy.Placement], order: dict[int, int]) -> None:
        """A cluster job's place changed: a new class, the daily cap running out or protection
        moves it to another partition; its place among the pool's waiting jobs (class, then the
        operator's drag order) becomes the order the cluster starts them in, where it allows."""
        for job_id, handle in list(self.handles.items()):
            if not self.executor.is_cluster(handle):
                continue
            job = self.store.job(job_id)
            placement = placements.get(str(job_id)) or cluster_policy.Placement(job.priority.label)
            before = dict(handle.record)
            try:
                note = self.executor.update_route(handle, placement.route)
                if job_id in order:
                    note = self.executor.set_order(handle, order[job_id]) or note
            except Exception as e:
                note = f"could not change its place in {self.executor.for_handle(handle).name}: {e}"
            if note:  # what the cluster did last: kept until it does something else
                handle.record["note"] = note
            handle.record["placement"] = placement.reason  # why it waits where it does: current only
            if handle.record != before:
                self.store.update(job_id, worker=handle.record)
            if handle.record.get("route") != placement.route and job.state is JobState.STARTING:
                self._dirty = True  # not moved yet (the cluster still had it running): try next tick

    def _cluster_preempted(self, job_id: int, event: dict, *, checkpointed: bool = True) -> JobRecord:
        """The cluster stopped this job and requeued it (same cluster job): record it like one of our
        own preemptions (audit, owner notified) and follow the requeued job. `checkpointed=False`:
        it was killed before it could save (its grace time ran out, a node failed) and is already
        running again from its last checkpoint. With an urgent Cutline job waiting to start on the
        preempting route, it is a preemption for that job (with its jump's reason, counted against
        the daily cap); without one, a requeue by the cluster (not counted). Raises StaleState if an
        operator stopped the job meanwhile."""
        handle = self.handles[job_id]
        cluster = self.executor.for_handle(handle).name
        job = self.store.job(job_id)
        urgent = [u for u in self.store.jobs({JobState.STARTING, JobState.RUNNING})
                  if u.id != job.id and u.priority is Priority.URGENT and u.device_kind == job.device_kind
                  and (self.handles.get(u.id) and self.handles[u.id].record.get("route") == Priority.URGENT.label)
                  and (u.state is JobState.STARTING or time.time() - (u.running_since or 0) < URGENT_JUST_STARTED_S)]
        jumps = [{"job": u.id, "name": u.name, "cluster_job": u.worker or {}, **(self._last_jump(u.id) or {})}
                 for u in urgent]
        lost = "" if checkpointed else (" before it could save (killed at the end of its grace time, or its node "
                                        "failed); it resumed from its last checkpoint")
        if jumps:
            kind, operator = "preempt", jumps[0].get("operator") or cluster
            reason = (f"{cluster} preempted job {job.id} for urgent job {jumps[0]['job']} ({jumps[0]['name']})"
                      + (f": {jumps[0]['reason']}" if jumps[0].get("reason") else "") + f"{lost}")
        else:
            kind, operator = "requeue", cluster
            reason = (f"{cluster} requeued job {job.id} with no urgent Cutline job waiting for it (an administrator's "
                      f"requeue, a node failure, or other work on the cluster){lost}")
        with self.store.transaction():
            job = self.store.job(job_id)
            if job.stop_target or not job.state.is_active:
                raise StaleState(f"job {job_id} changed while its cluster stop was being decided")
            self.audit.append(kind, operator=operator, reason=reason, job_id=job.id,
                              details={"victim": victim_details(job), "cluster_job": handle.record, "for_jobs": jumps,
                                       "checkpointed": checkpointed,
                                       "jump_seq": jumps[0].get("seq") if jumps else None})
            job = self.store.transition(job.id, JobEvent.WORKER_PREEMPTED, expect=job.state,
                                        detail=f"{'preempted' if jumps else 'requeued'} by {cluster}{lost}",
                                        preemptions=job.preemptions + (1 if jumps else 0), waiting_since=time.time(),
                                        running_since=None)
            # The next run's events start after this line: a restarted engine must not count
            # this preemption again.
            job = self.store.transition(job.id, JobEvent.DISPATCH, expect=JobState.QUEUED,
                                        detail=f"requeued by {cluster} as the same job",
                                        device_id=job.device_kind, running_since=time.time(),
                                        events_offset=event.get(STREAM_END, job.events_offset))
            if not checkpointed:  # its new run has begun already (the event that told us)
                job = self.store.transition(job.id, JobEvent.WORKER_STARTED, expect=JobState.STARTING,
                                            detail=f"running again on {cluster} from its last checkpoint")
            why = f" for urgent job {jumps[0]['job']} ({jumps[0]['name']})" if jumps else ""
            self.store.notify(job.owner, job.id, "preempted",
                              f"Your job {job.id} ({job.name}) was {'preempted' if jumps else 'requeued'} by "
                              f"{cluster}{why} at epoch {(job.epoch or 0) + 1}, batch {job.batch or 0}"
                              + (f" before it could save; it resumed from its last checkpoint." if not checkpointed
                                 else "; it is requeued and resumes from its checkpoint."))
        with self.store.lock:
            self.audit.flush_anchor()
        self._dirty = True  # its placement may change now (protection): follow it this tick
        return job

    def _cancelled_on_cluster(self, job: JobRecord, released: dict, now: float, cause: str) -> JobRecord:
        """Someone cancelled the job on the cluster, outside Cutline (an administrator's scancel),
        or it left the cluster and the cluster no longer knows why. Running it again would overrule
        them, and failing it would discard its progress: pause it with its checkpoint, audited, so
        its owner or an operator decides whether it resumes."""
        cluster = self.executor.for_record(job.worker).name
        what = (f"cancelled on {cluster} outside Cutline (scancel)" if cause == STOP_CANCELLED else
                f"gone from {cluster} without its worker saying why, and {cluster} no longer knows")
        kept = (f"paused with its checkpoint at epoch {(job.epoch or 0) + 1}, batch {job.batch or 0}"
                if job.checkpoint else "paused (it had no checkpoint yet)")
        reason = f"{what}; {kept}"
        with self.store.transaction():
            self.audit.append("pause", operator=cluster, reason=reason, job_id=job.id,
                              details={"victim": victim_details(job), "cluster_job": job.worker})
            done = self.store.transition(job.id, JobEvent.WORKER_PREEMPTED, expect=job.state, to=JobState.PAUSED,
                                         detail=reason, waiting_since=now, stop_target=None, stop_reason=None,
                                         **released)
            self._notify(done, "paused", f"Your job {job.id} ({job.name}) was {reason}. Resume it to run it again.")
        return done  # the caller commits, then writes the audit anchor

    def _last_jump(self, job_id: int) -> dict | None:
        with self.store.lock:
            row = self.store.conn.execute(
                "SELECT seq, operator, reason FROM audit WHERE job_id = ? AND kind IN ('jump', 'emergency', 'priority') "
                "ORDER BY seq DESC LIMIT 1", (str(job_id),)
            ).fetchone()
        return None if row is None else {"seq": row[0], "operator": row[1], "reason": row[2]}

    def _start(self, job_id: int, device_id: str, *, gated: bool,
               placement: cluster_policy.Placement | None = None, order: int | None = None) -> None:
        job = self.store.job(job_id)
        device = self.devices[device_id]
        events_path = Path(job.run_dir) / protocol.EVENTS_FILE
        offset = stream_size(events_path)
        try:
            job = self.store.transition(
                job.id, JobEvent.DISPATCH, expect=JobState.QUEUED, detail=f"on {device_id}",
                device_id=device_id, running_since=time.time(), gated=int(gated), events_offset=offset,
                attempts=job.attempts + 1, worker=None,
            )
        except StaleState:
            return  # paused or cancelled since the snapshot
        spec = JobSpec(model=job.model, data=job.data, run_dir=job.run_dir, train_args=dict(job.train_args),
                       device=device.train_device, config_dir=str(paths.ultralytics_config_dir(self.home)),
                       keep_final_state=self.settings.keep_final_state)
        try:
            handle = self.executor.launch(LaunchRequest(job.id, spec, device, gated=gated,
                                                        urgent=job.priority is Priority.URGENT, priority=job.priority,
                                                        route=placement.route if placement else None,
                                                        order=order))
        except Exception as e:  # disk full, permissions, a cluster refusing: the job must not hold the device
            log.error("could not start job %s: %s", job.id, e)
            self._launch_failed(job.id, f"could not start its worker: {e}", retry=getattr(e, "retryable", False))
            return
        if placement is not None and placement.reason:
            handle.record["placement"] = placement.reason
        job = self.store.update(job.id, worker=handle.record, error=None)
        self._retry_after.pop(job.id, None)
        self._track(job, handle)
        self._emit("job", job)

    def _launch_failed(self, job_id: int, error: str, retry: bool = False) -> None:
        with self.store.transaction():
            job = self.store.job(job_id)
            released = dict(device_id=None, gated=0, running_since=None, stop_sent_at=None, stop_deadline=None)
            if job.state is JobState.STARTING and retry:
                # The cluster is down or refused: the job stays queued, with the error shown, and is
                # tried again shortly. Nothing is lost.
                self.store.transition(job.id, JobEvent.RECOVER, expect=JobState.STARTING, detail=error, error=error,
                                      **released)
                if job.error != error:
                    self._notify(job, "failed", f"Your job {job.id} ({job.name}) is still queued: {error}")
                self._retry_after[job.id] = time.time() + RETRY_LAUNCH_S
            elif job.state is JobState.STARTING:
                done = self.store.transition(job.id, JobEvent.WORKER_FAILED, expect=JobState.STARTING, detail=error,
                                             error=error, ended_at=time.time(), **released)
                self._notify(done, "failed", f"Your job {job.id} ({job.name}) {error}")
            elif job.state is JobState.PREEMPTING:  # an operator stopped it meanwhile: honour that
                self.store.transition(job.id, JobEvent.WORKER_PREEMPTED, expect=JobState.PREEMPTING,
                                      to=JobState(job.stop_target or "queued"), detail=error, stop_target=None,
                                      waiting_since=time.time(), **released)
        self._dirty = True

    def _track(self, job: JobRecord, handle: WorkerHandle) -> None:
        self.handles[job.id] = handle
        self.tails[job.id] = EventTail(Path(job.run_dir) / protocol.EVENTS_FILE, offset=job.events_offset)

    # ------------------------------------------------------------------ shutdown and recovery

    def _stop_all_for_shutdown(self) -> None:
        for job in self.store.jobs({JobState.STARTING, JobState.RUNNING}):
            if self._on_cluster(job):
                continue  # a cluster keeps running its jobs; the next start finds them again
            try:
                self.store.transition(job.id, JobEvent.PREEMPT, expect=job.state, detail="Cutline is closing",
                                      stop_target=JobState.QUEUED.value, stop_reason="Cutline closed; resumes at next start")
            except StaleState:
                pass

    def recover(self) -> list[str]:
        """At start: find every job the store says is active, adopt its worker if it is alive,
        otherwise settle it from what its event stream says. Returns what was done, in words."""
        report = []
        self.executor.refresh()
        for job in self.store.jobs(set(ACTIVE)):
            record = job.worker
            if record is None and job.device_kind in self.pools:
                record = {"executor": self.pools[job.device_kind].name}  # submitted, id never recorded
            handle = self.executor.adopt(job.id, job.run_dir, record)
            if handle is not None:
                if job.gated:
                    # A gated worker waits for a 'go' only its dead engine could send; it exits
                    # by itself (stdin closed). Make sure, and requeue the job.
                    self.executor.kill(handle)
                    time.sleep(0.2)
                    job = self.store.update(job.id, killed_at=time.time())
                else:
                    job = self.store.update(job.id, worker=handle.record)
                    self._track(job, handle)
                    where = (f"pid {handle.record['pid']}" if handle.record.get("pid")
                             else f"{handle.record.get('executor', '?')} job {handle.record.get('slurm_job_id', '?')}")
                    report.append(f"job {job.id}: adopted its live worker ({where})")
                    continue
            events = list(_events_since(Path(job.run_dir) / protocol.EVENTS_FILE, job.events_offset))
            # A dead local worker's pid means nothing now; a cluster job's id lets the cluster say
            # why it is gone (an administrator's scancel while Cutline was closed).
            cluster = record is not None and self.executor.is_cluster(record)
            self.handles[job.id] = WorkerHandle(job.id, dict(record) if cluster else {})
            self.tails[job.id] = EventTail(Path(job.run_dir) / protocol.EVENTS_FILE, offset=job.events_offset)
            self._apply_events(job.id, self.tails[job.id].read_new(), final=True)
            if job.worker is None and not events:
                # Crashed between choosing a device and starting the worker: nothing ran.
                self.handles.pop(job.id)
                self.tails.pop(job.id)
                self.store.transition(job.id, JobEvent.RECOVER, expect=self.store.job(job.id).state,
                                      detail="engine restarted before the worker started", device_id=None,
                                      gated=0, waiting_since=time.time(), running_since=None, stop_sent_at=None,
                                      stop_deadline=None, stop_target=None)
                report.append(f"job {job.id}: requeued (its worker had not started)")
                continue
            current = self.store.job(job.id)
            if current.state.is_active:
                self._settle(job.id, None)
            report.append(f"job {job.id}: worker gone; now {self.store.job(job.id).state.value}")
        for line in report:
            log.info("recovery: %s", line)
        self.recovery_report = report
        return report

    # ------------------------------------------------------------------ notifications

    def _notify(self, job: JobRecord, kind: str, message: str) -> None:
        self.store.notify(job.owner, job.id, kind, message)

    def _forward_notifications(self) -> None:
        for n in self.store.notifications(after_seq=self._notification_seq):
            self._notification_seq = n.seq
            self._emit("notification", n)

    # ------------------------------------------------------------------ reading

    def status(self) -> dict[str, Any]:
        active = self.store.jobs(set(ACTIVE))
        busy = {j.device_id for j in active}
        return {
            "state": self.state,
            "home": str(self.home),
            "devices": len(self.devices),
            "devices_busy": len(busy & set(self.devices)),
            "device_backend": self.monitor.backend_note,
            "preemptions_today": self.ops.preemptions_today(),
            "daily_preemption_cap": self.settings.daily_preemption_cap,
            "last_error": self.last_error,
            "api": getattr(self, "api_note", "off"),
            **self.executor.status(),
        }

    def why_waiting(self) -> dict[int, str]:
        decision = policy.decide(self.ops.snapshot())
        out = {int(job_id): reason for job_id, reason in decision.waiting}
        for job in self.store.jobs({JobState.STARTING, JobState.QUEUED}):
            if job.device_kind in self.pools:
                handle = self.handles.get(job.id)
                reason = self.executor.waiting_reason(handle) if handle else (job.error or "being handed to the cluster")
                if reason:
                    out[job.id] = reason
        return out

    def _on_cluster(self, job: JobRecord) -> bool:
        return job.device_kind in self.pools or self.executor.is_cluster(job.worker)


def _events_since(path: Path, offset: int):
    tail = EventTail(path, offset=offset)
    yield from tail.read_new()


__all__ = ["Engine", "EngineBusy", "engine_running", "iter_events", "job_view"]
