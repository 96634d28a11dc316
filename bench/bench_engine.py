"""The jump, timed end to end through the real engine, and what the engine costs.

    python bench/bench_engine.py [--runs 3] [--queue 10000]

1. **Urgent submission -> urgent job's first training batch**, on one CPU slot where a low job is
   training, with the warm standby and again with cold starts. Broken into its parts from the
   store and the event streams: submission -> stop request sent to the victim, victim's checkpoint
   write, stop request -> victim exit, urgent worker's own setup, and exit -> first urgent batch.
2. **One engine decision on a deep queue**: the store snapshot plus `policy.decide`, with
   `--queue` jobs in the database (the policy alone is in bench_policy.py).
3. **Engine memory**: resident set size of a headless engine process (`main.py headless`), idle
   with an empty store and with the deep queue, measured with psutil after it settles.

Figures, not pass/fail. Timestamps are wall clock (time.time) from one machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import psutil  # noqa: E402

from engine import policy  # noqa: E402
from engine.core import Engine  # noqa: E402
from engine.demo_dataset import generate_dataset  # noqa: E402
from engine.jobs import JobState  # noqa: E402

from engine_runs import TEST_SETTINGS, run_events, tiny_job, wait_for  # noqa: E402

ENDED = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


def one_jump(home: Path, data: Path, standby: bool) -> dict[str, float]:
    engine = Engine(home, use_nvml=False, settings={**TEST_SETTINGS, "warm_standby": standby,
                                                     "keep_final_state": False})
    engine.start()
    try:
        low = engine.ops.submit(**{**tiny_job(data, "background", "low"),
                                   "train_args": {**tiny_job(data, "x")["train_args"], "epochs": 50}})
        if standby:
            wait_for(lambda: engine.executor.status()["standby_ready"], 120, "standby")
        wait_for(lambda: (engine.store.job(low.id).batch or 0) >= 3, 120, "low job training")
        t_submit = time.time()
        urgent = engine.ops.submit(**{**tiny_job(data, "urgent", "urgent"),
                                      "train_args": {**tiny_job(data, "x")["train_args"], "epochs": 1}},
                                   reason="benchmark")
        engine.wake()
        wait_for(lambda: run_events(engine.store.job(urgent.id).run_dir, "batch"), 120, "urgent first batch",
                 interval=0.01)
        low_run, urgent_run = engine.store.job(low.id), engine.store.job(urgent.id)
        checkpoint = [e for e in run_events(low_run.run_dir, "checkpoint") if e["reason"] == "preempt"][0]
        started = run_events(urgent_run.run_dir, "started")[0]
        first_batch = run_events(urgent_run.run_dir, "batch")[0]
        stop_sent = next(t["ts"] for t in engine.store.transitions(low.id) if t["event"] == "preempt")
        exit_seen = next(t["ts"] for t in engine.store.transitions(low.id) if t["event"] == "worker_preempted")
        wait_for(lambda: engine.store.job(urgent.id).state in ENDED, 120, "urgent to end")
        return {
            "submit -> first urgent batch": first_batch["ts"] - t_submit,
            "submit -> victim stop request": stop_sent - t_submit,
            "victim checkpoint write": checkpoint["seconds"],
            "stop request -> victim exit seen": exit_seen - stop_sent,
            "urgent worker setup (started event)": started["setup_seconds"],
            "victim exit seen -> first urgent batch": first_batch["ts"] - exit_seen,
        }
    finally:
        engine.shutdown(mode="checkpoint", timeout=60)


def decision_time(home: Path, data: Path, queue: int, runs: int = 5) -> tuple[float, float]:
    engine = Engine(home, use_nvml=False, settings={**TEST_SETTINGS})
    store = engine.store
    job = engine.ops.submit(**tiny_job(data, "template"))
    # Bulk rows straight into the table (submitting 10k jobs one by one validates 10k datasets).
    # GPU-only jobs on a CPU-only machine: the policy sorts and considers every one, none can start.
    engine.ops.pause(job.id)
    rows = [(f"job {i}", "bench", i % 3, "queued", i, time.time(), time.time(), job.model, job.data, "{}", "gpu",
             f"{job.run_dir}-{i}", time.time()) for i in range(queue)]
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO jobs (name, owner, priority, state, queue_rank, submitted_at, waiting_since, model, data, "
            "train_args, device_kind, run_dir, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        policy.decide(engine.ops.snapshot())
        times.append(time.perf_counter() - t0)
    engine.executor.close()
    store.close()
    return statistics.median(times), max(times)


def headless_rss(home: Path, settle_s: float = 15.0) -> tuple[float, float]:
    """(engine process RSS, warm standby RSS or 0) in MiB, after `settle_s`."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "main.py", "headless", "--home", str(home), "--no-nvml"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle_s)
        engine = psutil.Process(proc.pid)
        standby = [c for c in engine.children(recursive=True) if "--standby" in c.cmdline()]
        return engine.memory_info().rss / 2**20, sum(c.memory_info().rss for c in standby) / 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queue", type=int, default=10000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cutline-bench-engine-"))
    try:
        data = generate_dataset(root / "data", train=32, val=8, imgsz=64, seed=0)
        print(f"load average at start: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}")
        results: dict[str, list[dict]] = {}
        for mode in ("warm standby", "cold start"):
            results[mode] = [one_jump(root / f"jump-{mode[:4]}-{i}", data, mode == "warm standby")
                             for i in range(args.runs)]
        print(f"\nUrgent submission on 1 CPU slot with a low job training ({args.runs} runs, median [min-max], s):")
        for part in results["warm standby"][0]:
            cells = []
            for mode, runs in results.items():
                values = [r[part] for r in runs]
                cells.append(f"{mode}: {statistics.median(values):6.2f} [{min(values):.2f}-{max(values):.2f}]")
            print(f"  {part:40s} " + "   ".join(cells))
        warm = statistics.median(r["submit -> first urgent batch"] for r in results["warm standby"])
        cold = statistics.median(r["submit -> first urgent batch"] for r in results["cold start"])
        print(f"  warm standby is {cold / warm:.1f}x faster to the first urgent batch than a cold start")

        median, worst = decision_time(root / "deep", data, args.queue)
        print(f"\nOne engine decision (store snapshot + policy) with {args.queue} jobs in the store: "
              f"median {median * 1000:.0f} ms, worst {worst * 1000:.0f} ms")

        shutil.rmtree(root / "idle", ignore_errors=True)
        idle, standby = headless_rss(root / "idle")
        deep, _ = headless_rss(root / "deep")
        print(f"\nHeadless engine process RSS: empty store {idle:.0f} MiB; with {args.queue} jobs {deep:.0f} MiB "
              f"(workers are separate processes)")
        print(f"Warm standby worker RSS (torch and Ultralytics imported, waiting): {standby:.0f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
