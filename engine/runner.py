"""One training worker as a local subprocess: start, preempt, safety checkpoint, and its events.

The engine's local executor builds on this; the console never touches processes itself.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from . import protocol
from .events import EventTail
from .spec import JobSpec

REPO_ROOT = Path(__file__).resolve().parents[1]


class WorkerProcess:
    def __init__(self, spec: JobSpec, env: dict[str, str] | None = None):
        self.spec = spec
        self.run_dir = Path(spec.run_dir)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.tail = EventTail(self.run_dir / protocol.EVENTS_FILE)
        self.stop_requested = False

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.run_dir / protocol.SPEC_FILE
        self.spec.save(spec_path)
        config_dir = self.spec.config_dir or str(self.run_dir.parent / ".ultralytics")
        env = protocol.worker_environment(None, config_dir)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        log = open(self.run_dir / protocol.LOG_FILE, "ab")
        self.stop_requested = False
        # Own process group: a signal meant for the console never reaches the worker by accident.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.worker", str(spec_path)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def preempt(self) -> None:
        """Ask the worker to finish its batch, checkpoint and exit resumable."""
        if self.running:
            self.stop_requested = True
            self.proc.send_signal(protocol.PREEMPT_SIGNALS[0])

    def request_checkpoint(self) -> None:
        if self.running:
            self.proc.send_signal(protocol.CHECKPOINT_SIGNAL)

    def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def new_events(self) -> list[dict]:
        return self.tail.read_new()

    def has_checkpoint(self) -> bool:
        return (self.run_dir / protocol.RESUME_CHECKPOINT).exists()
