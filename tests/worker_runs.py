"""Helpers that run the real training worker as a subprocess and compare what it leaves behind."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from engine import protocol
from engine.events import read_events
from engine.spec import JobSpec

REPO = Path(__file__).resolve().parents[1]

# Small enough for CI on 2 cores, big enough to cover warmup, gradient accumulation
# (nbs=16 over batch 4 -> optimizer step every 4th batch), mosaic and close_mosaic.
TINY_TRAIN_ARGS = {
    "epochs": 3,
    "imgsz": 64,
    "batch": 4,
    "nbs": 16,
    "workers": 0,
    "seed": 0,
    "deterministic": True,
    "plots": False,
    "close_mosaic": 1,
    "warmup_epochs": 1,
    "amp": False,
}


def make_spec(run_dir: Path, data_yaml: Path, **train_args) -> Path:
    spec = JobSpec(
        model="yolov8n.yaml",
        data=str(data_yaml),
        run_dir=str(run_dir),
        train_args={**TINY_TRAIN_ARGS, **train_args},
        device="cpu",
        config_dir=str(run_dir.parent / ".ultralytics"),
        keep_final_state=True,
    )
    path = run_dir / protocol.SPEC_FILE
    spec.save(path)
    return path


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CUTLINE_FORBID_NETWORK"] = "1"
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def start_worker(spec_path: Path, **env: str) -> subprocess.Popen:
    log = open(Path(spec_path).parent / protocol.LOG_FILE, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "engine.worker", str(spec_path)],
        env=worker_env(**env),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def run_worker(spec_path: Path, timeout: float = 240, **env: str) -> int:
    proc = start_worker(spec_path, **env)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def events_of(run_dir: Path, kind: str | None = None) -> list[dict]:
    events = read_events(Path(run_dir) / protocol.EVENTS_FILE)
    return [e for e in events if kind is None or e["event"] == kind]


def results_without_time(run_dir: Path) -> list[dict]:
    """results.csv rows minus the wall-clock 'time' column (the only column that may differ)."""
    with open(Path(run_dir) / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def state_differences(a: Path, b: Path) -> list[str]:
    """Every tensor of the raw model, EMA and optimizer that is not bit-identical between two states."""
    import torch

    sa = torch.load(a, map_location="cpu", weights_only=False)
    sb = torch.load(b, map_location="cpu", weights_only=False)
    diffs = []
    for part in ("model", "ema"):
        for name, tensor in sa[part].items():
            if not torch.equal(tensor, sb[part][name]):
                diffs.append(f"{part}.{name}")
    opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    if set(opt_a) != set(opt_b):
        diffs.append("optimizer.state keys")
    for key in opt_a:
        for field, value in opt_a[key].items():
            other = opt_b.get(key, {}).get(field)
            if isinstance(value, torch.Tensor) and (other is None or not torch.equal(value, other)):
                diffs.append(f"optimizer.state[{key}].{field}")
    if sa["ema_updates"] != sb["ema_updates"]:
        diffs.append("ema_updates")
    return diffs
