"""How long one scheduling decision takes on a deep queue.

    python bench/bench_policy.py [--jobs 10000] [--devices 8] [--runs 20]

Builds N queued jobs (all four classes, some aged, some GPU-only, a few urgent) plus running jobs
on all but one of the devices, then times `decide` with time.perf_counter and prints the median
and p95. A figure, not a pass/fail: the goal is "well under 100 ms" for 10,000 jobs on 8 devices.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.jobs import JobState, Priority  # noqa: E402
from engine.policy import DeviceView, JobView, Rules, Snapshot, decide  # noqa: E402

NOW = 1_000_000.0


def build(n_jobs: int, n_devices: int, seed: int = 7) -> Snapshot:
    rng = random.Random(seed)
    devices = tuple(
        DeviceView(f"gpu{i}", "gpu", healthy=True, reserved_for_urgent=(i == n_devices - 1))
        for i in range(n_devices - 1)
    ) + (DeviceView("cpu0", "cpu"),)
    jobs: list[JobView] = []
    # Running jobs on all but the last GPU, so some queued jobs start and urgent ones preempt.
    for i, d in enumerate(devices[:-2]):
        jobs.append(JobView(
            id=f"run{i:02d}", priority=rng.choice([Priority.LOW, Priority.NORMAL, Priority.HIGH]),
            state=JobState.RUNNING, running_since=NOW - rng.uniform(60, 7200), device_id=d.id,
            last_checkpoint_at=NOW - rng.uniform(0, 600), progress=rng.random(),
            preemptions=rng.choice([0, 0, 1, 2]),
        ))
    weights = [30, 50, 19, 1]  # low, normal, high, urgent
    for i in range(n_jobs):
        submitted = NOW - rng.uniform(0, 3 * 86400)
        jobs.append(JobView(
            id=f"job{i:05d}",
            priority=rng.choices(list(Priority), weights)[0],
            state=JobState.QUEUED,
            queue_rank=rng.randrange(n_jobs),
            submitted_at=submitted,
            waiting_since=submitted + rng.uniform(0, NOW - submitted),
            device_kind=rng.choice([None, None, None, "gpu"]),
        ))
    rng.shuffle(jobs)
    return Snapshot(tuple(jobs), devices, Rules(reserve_device_for_urgent=True), NOW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    snapshot = build(args.jobs, args.devices)
    decision = decide(snapshot)  # warm-up, and a sanity line for the reader
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        decide(snapshot)
        times.append(time.perf_counter() - t0)
    times.sort()
    median = statistics.median(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(f"decide(): {args.jobs} queued jobs, {args.devices} devices, {args.runs} runs")
    print(f"  actions: {len(decision.starts)} start, {len(decision.preemptions)} preempt; "
          f"{len(decision.waiting)} waiting with reasons")
    print(f"  median {median * 1e3:.1f} ms   p95 {p95 * 1e3:.1f} ms   min {times[0] * 1e3:.1f} ms")
    print(f"  {median / args.jobs * 1e6:.2f} us per queued job; {median / 0.100:.0%} of the 100 ms budget")


if __name__ == "__main__":
    main()
