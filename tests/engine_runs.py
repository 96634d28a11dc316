"""Helpers for tests that run the real engine (in this process or as `main.py headless`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine import protocol
from engine.events import read_events

from worker_runs import REPO, TINY_TRAIN_ARGS

# Fast and deterministic: no standby unless a test wants one, no minimum runtime before a
# preemption, short grace, the final training state kept for bit-identity checks.
TEST_SETTINGS = {
    "warm_standby": False,
    "min_runtime_s": 0.0,
    "stop_grace_s": 60.0,
    "keep_final_state": True,
    "safety_checkpoint_interval_s": 0,
    "tick_s": 0.1,
    "api_enabled": False,
}


def tiny_job(data_yaml: Path, name: str, priority: str = "normal", **extra) -> dict:
    return dict(name=name, model="yolov8n.yaml", data=str(data_yaml), train_args=dict(TINY_TRAIN_ARGS),
                priority=priority, owner=extra.pop("owner", "alice"), **extra)


def zip_weights(path: Path, payload: bytes = b"not really weights; the worker would find out") -> Path:
    """A file that passes the engine's checkpoint check (a whole zip archive) without being a model:
    enough for tests of the queue, which never train from it."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    return path


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_events(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    events = read_events(Path(run_dir) / protocol.EVENTS_FILE)
    return [e for e in events if kind is None or e["event"] == kind]


def training_intervals(run_dir: str | Path) -> list[tuple[float, float]]:
    """(first batch, end) of every run of a job: when it actually held its device."""
    intervals, start = [], None
    for e in run_events(run_dir):
        if e["event"] == "batch" and start is None:
            start = e["ts"]
        elif e["event"] in ("preempted", "finished", "failed") and start is not None:
            intervals.append((start, e["ts"]))
            start = None
    if start is not None:
        intervals.append((start, float("inf")))
    return intervals


def overlaps(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple]:
    return [(x, y) for x in a for y in b if x[0] < y[1] and y[0] < x[1]]


def start_headless(home: Path, **env_extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), CUTLINE_FORBID_NETWORK="1", **env_extra)
    log = open(home / "headless.log", "ab")
    return subprocess.Popen([sys.executable, "main.py", "headless", "--home", str(home), "--no-nvml"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_headless(proc: subprocess.Popen, timeout: float = 120) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
