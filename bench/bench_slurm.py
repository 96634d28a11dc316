"""The jump on Slurm next to the same jump on local devices.

    python bench/bench_slurm.py [--runs 3]

Starts a real single-node Slurm (tests/slurm_cluster.py; needs root and Debian's slurm packages,
which ./run-tests installs), trains a low job that fills the node, submits an urgent job, and
prints: urgent submission -> the victim's preemption checkpoint (Slurm's SIGTERM to the srun step),
and urgent submission -> the urgent job's first training batch. The same figures for the local
executor (cold start, and warm standby) come from bench_engine's scenario on this machine.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from bench_engine import one_jump  # noqa: E402
from engine import paths  # noqa: E402
from engine.core import Engine  # noqa: E402
from engine.demo_dataset import generate_dataset  # noqa: E402
from engine.slurm_executor import SlurmExecutor  # noqa: E402

from engine_runs import TEST_SETTINGS, run_events, tiny_job, wait_for  # noqa: E402
from slurm_cluster import LocalSlurm, available  # noqa: E402


def slurm_jump(root: Path, data: Path) -> dict[str, float]:
    cluster = LocalSlurm(root / "slurm").start()
    home = paths.cutline_home(root / "home")
    engine = Engine(home, use_nvml=False, settings={**TEST_SETTINGS, "keep_final_state": False},
                    pools={"slurm": SlurmExecutor(home, paths.ultralytics_config_dir(home), cpus_per_task=cluster.cpus,
                                                  env=cluster.env)})
    try:
        engine.start()
        train_args = {**tiny_job(data, "x")["train_args"]}
        low = engine.ops.submit(**{**tiny_job(data, "background", "low", device_kind="slurm"),
                                   "train_args": {**train_args, "epochs": 50}})
        wait_for(lambda: (engine.store.job(low.id).batch or 0) >= 3, 120, "low job training on Slurm")
        t_submit = time.time()
        urgent = engine.ops.submit(**{**tiny_job(data, "urgent", "urgent", device_kind="slurm"),
                                      "train_args": {**train_args, "epochs": 1}}, reason="benchmark")
        first = wait_for(lambda: run_events(engine.store.job(urgent.id).run_dir, "batch"), 120, "urgent batch", 0.01)[0]
        checkpoint = [e for e in run_events(engine.store.job(low.id).run_dir, "checkpoint") if e["reason"] == "preempt"][0]
        started = run_events(engine.store.job(urgent.id).run_dir, "started")[0]
        return {"submit -> victim checkpoint written": checkpoint["ts"] - t_submit,
                "submit -> urgent worker started": started["ts"] - t_submit,
                "submit -> first urgent batch": first["ts"] - t_submit}
    finally:
        engine.shutdown()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    why = available()
    if why:
        print(f"cannot run: {why}")
        return 1
    root = Path(tempfile.mkdtemp(prefix="cutline-bench-slurm-"))
    try:
        data = generate_dataset(root / "data", train=32, val=8, imgsz=64, seed=0)
        results = {
            "Slurm (srun, partition preemption)": [slurm_jump(root / f"slurm{i}", data) for i in range(args.runs)],
            "local, cold start": [_local(root / f"cold{i}", data, False) for i in range(args.runs)],
            "local, warm standby": [_local(root / f"warm{i}", data, True) for i in range(args.runs)],
        }
        print(f"\nUrgent submission while a low job fills the only slot ({args.runs} runs, median [min-max], s):")
        for name, runs in results.items():
            print(f"  {name}")
            for key in runs[0]:
                values = [r[key] for r in runs]
                print(f"    {key:40s} {statistics.median(values):6.2f} [{min(values):.2f}-{max(values):.2f}]")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _local(root: Path, data: Path, standby: bool) -> dict[str, float]:
    parts = one_jump(root, data, standby)
    return {"submit -> first urgent batch": parts["submit -> first urgent batch"]}


if __name__ == "__main__":
    raise SystemExit(main())
