"""Workers as subprocesses on this machine, plus one warm standby for urgent jobs.

A cold worker spends most of its start importing torch and Ultralytics. The standby pays for
that ahead of time (`python -m engine.worker --standby`) and then waits on stdin for a job, so
an urgent job starts in well under a second of setup. Both cold and standby workers can be
*gated*: they prepare (dataset scan, model build) while the job they replace is still saving its
checkpoint, and start the first batch when the engine writes `{"go": true}` on their stdin.

Every worker runs in its own session (process group), so a Ctrl+C or a crash of the engine does
not take it down, and a kill reaches its dataloader processes too. The run folder's lock
(engine.runlock) tells a restarted engine which workers are still alive.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from . import protocol, runlock
from .executor import Executor, ExecutorError, LaunchRequest, WorkerExit, WorkerHandle

REPO_ROOT = Path(__file__).resolve().parents[1]
STANDBY_RESPAWN_DELAY_S = 5.0  # let the urgent job have the CPU for its first batches first


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, home: Path, config_dir: Path, *, cpu_slots: int = 1, warm_standby: bool = True,
                 extra_env: dict[str, str] | None = None) -> None:
        self.home = Path(home)
        self.config_dir = Path(config_dir)
        self.cpu_slots = max(1, cpu_slots)
        self.warm_standby = warm_standby
        self.extra_env = dict(extra_env or {})
        self.logs = self.home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._standby: subprocess.Popen | None = None
        self._standby_ready_file = self.logs / "standby.ready"
        self._standby_spawned_at: float | None = None
        self._standby_not_before = 0.0
        self.standby_note = "off" if not warm_standby else "starting"
        self._dismissed: list[subprocess.Popen] = []

    # ------------------------------------------------------------------ environment

    def _base_env(self) -> dict[str, str]:
        env = protocol.worker_environment(None, str(self.config_dir))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        return env

    def _device_env(self, request: LaunchRequest) -> dict[str, str]:
        env = request.device.worker_env()
        if request.device.kind == "cpu":
            env["CUTLINE_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.cpu_slots))
        return env

    # ------------------------------------------------------------------ launch

    def launch(self, request: LaunchRequest) -> WorkerHandle:
        try:
            run_dir = Path(request.spec.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            spec_path = run_dir / protocol.SPEC_FILE
            request.spec.save(spec_path)
            if request.urgent and self.standby_ready:
                handle = self._hand_to_standby(request, spec_path)
                if handle is not None:
                    return handle
            return self._cold_start(request, spec_path)
        except OSError as e:  # disk full, permissions: say so, in the executor's own terms
            raise ExecutorError(f"could not start a worker in {request.spec.run_dir}: {e}") from e

    def _cold_start(self, request: LaunchRequest, spec_path: Path) -> WorkerHandle:
        env = self._base_env()
        env.update(self._device_env(request))
        args = [sys.executable, "-m", "engine.worker", str(spec_path)]
        if request.gated:
            args.append("--gated")
        log = open(Path(request.spec.run_dir) / protocol.LOG_FILE, "ab")
        try:
            proc = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
                stdin=subprocess.PIPE if request.gated else subprocess.DEVNULL,
            )
        except OSError as e:
            raise ExecutorError(f"could not start a worker: {e}") from e
        finally:
            log.close()
        return self._handle(request.job_id, proc, request.gated, standby=False)

    def _hand_to_standby(self, request: LaunchRequest, spec_path: Path) -> WorkerHandle | None:
        proc, self._standby = self._standby, None
        self._standby_ready_file.unlink(missing_ok=True)
        self._standby_not_before = time.monotonic() + STANDBY_RESPAWN_DELAY_S
        message = {"spec": str(spec_path), "env": {**self._device_env(request), **self.extra_env},
                   "gated": request.gated}
        try:
            proc.stdin.write((json.dumps(message) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None  # it died just now; start cold
        return self._handle(request.job_id, proc, request.gated, standby=True)

    @staticmethod
    def _handle(job_id: int, proc: subprocess.Popen, gated: bool, standby: bool) -> WorkerHandle:
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = None
        record = {"executor": "local", "pid": proc.pid, "create_time": created, "standby": standby}
        return WorkerHandle(job_id=job_id, record=record, gated=gated, detail=proc)

    # ------------------------------------------------------------------ control

    def release(self, handle: WorkerHandle) -> None:
        proc = handle.detail
        if isinstance(proc, subprocess.Popen) and proc.stdin is not None:
            try:
                proc.stdin.write(b'{"go": true}\n')
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # it ended; poll() reports how
        handle.gated = False

    def stop(self, handle: WorkerHandle) -> None:
        self._signal(handle, protocol.PREEMPT_SIGNALS[0])

    def checkpoint(self, handle: WorkerHandle) -> None:
        self._signal(handle, protocol.CHECKPOINT_SIGNAL)

    def kill(self, handle: WorkerHandle) -> None:
        pid = handle.record.get("pid")
        if pid is None or not self._alive(handle):
            return
        try:
            os.killpg(pid, signal.SIGKILL)  # its dataloader processes too
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _signal(self, handle: WorkerHandle, signum: int) -> None:
        pid = handle.record.get("pid")
        if pid is not None and self._alive(handle):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _alive(self, handle: WorkerHandle) -> bool:
        proc = handle.detail
        if isinstance(proc, subprocess.Popen):
            return proc.poll() is None
        return _same_process_alive(handle.record)

    def poll(self, handle: WorkerHandle) -> WorkerExit | None:
        proc = handle.detail
        if isinstance(proc, subprocess.Popen):
            code = proc.poll()
            if code is None:
                return None
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            return WorkerExit(code)
        return None if _same_process_alive(handle.record) else WorkerExit(None)

    def adopt(self, job_id: int, run_dir: str, record: dict[str, Any] | None) -> WorkerHandle | None:
        holder = runlock.holder(run_dir)
        if holder is None:
            return None
        pid = holder.get("pid") or (record or {}).get("pid")
        adopted = {"executor": "local", "pid": pid, "adopted": True}
        try:
            adopted["create_time"] = psutil.Process(pid).create_time()
        except (psutil.Error, TypeError, ValueError):
            adopted["create_time"] = None
        # No stdin: an adopted worker is past its gate (a gated one exits when its engine goes away).
        return WorkerHandle(job_id=job_id, record=adopted, gated=False, detail=None)

    # ------------------------------------------------------------------ standby

    @property
    def standby_ready(self) -> bool:
        proc = self._standby
        return proc is not None and proc.poll() is None and self._standby_ready_file.exists()

    def maintain(self) -> None:
        self._dismissed = [p for p in self._dismissed if p.poll() is None]
        if not self.warm_standby:
            return
        proc = self._standby
        if proc is not None:
            code = proc.poll()
            if code is None:
                if self._standby_ready_file.exists():
                    self.standby_note = "ready"
                return
            self._standby = None
            self.standby_note = f"exited ({protocol.describe_exit(code)}); see {self.logs / 'standby.log'}"
            if code != protocol.EXIT_PREEMPTED:
                self.warm_standby = False  # unusable here (CUDA initialised at import, say): cold starts only
                return
        if time.monotonic() < self._standby_not_before:
            return
        self._spawn_standby()

    def _spawn_standby(self) -> None:
        self._standby_ready_file.unlink(missing_ok=True)
        log = open(self.logs / "standby.log", "ab")
        try:
            self._standby = subprocess.Popen(
                [sys.executable, "-m", "engine.worker", "--standby", "--ready-file", str(self._standby_ready_file),
                 "--config-dir", str(self.config_dir)],
                env=self._base_env(), stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                cwd=REPO_ROOT, start_new_session=True,
            )
            self._standby_spawned_at = time.monotonic()
            self.standby_note = "importing"
        except OSError as e:
            self.standby_note = f"could not start: {e}"
            self.warm_standby = False
        finally:
            log.close()

    def set_warm_standby(self, enabled: bool) -> None:
        self.warm_standby = enabled
        if not enabled:
            proc, self._standby = self._standby, None
            if proc is not None and proc.poll() is None:
                proc.terminate()  # it has no job; reaped below without blocking the engine
                self._dismissed.append(proc)
            self._standby_ready_file.unlink(missing_ok=True)
            self.standby_note = "off"

    def status(self) -> dict[str, Any]:
        return {"executor": self.name, "standby": self.standby_note if self.warm_standby else "off",
                "standby_ready": self.standby_ready}

    def close(self) -> None:
        proc, self._standby = self._standby, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # it has no job: it just exits
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._standby_ready_file.unlink(missing_ok=True)


def _same_process_alive(record: dict[str, Any]) -> bool:
    """True if the recorded process still exists (the same one: pid reuse is checked by start time)."""
    pid = record.get("pid")
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = record.get("create_time")
        return created is None or abs(proc.create_time() - created) < 1.0
    except psutil.Error:
        return False
