"""Preemption and exact resume: any number of SIGTERMs, at any moment, must not change the result.

Every preempted run is compared with the uninterrupted baseline: raw model, EMA and optimizer
must be bit-identical, and results.csv equal (all columns but wall-clock time).
"""
import os
import random
import signal
import time

import pytest
import torch

from engine import protocol

from worker_runs import (
    events_of,
    make_spec,
    results_without_time,
    run_worker,
    start_worker,
    state_differences,
)

pytestmark = pytest.mark.slow

FINAL_STATE = protocol.FINAL_STATE


def assert_same_as_baseline(run_dir, baseline_run):
    assert (run_dir / FINAL_STATE).exists(), (run_dir / protocol.LOG_FILE).read_text()[-3000:]
    assert state_differences(baseline_run / FINAL_STATE, run_dir / FINAL_STATE) == []
    assert results_without_time(run_dir) == results_without_time(baseline_run)


@pytest.mark.parametrize(
    "points",
    [
        pytest.param(["batch:0:1"], id="early-in-epoch"),
        pytest.param(["batch:1:7"], id="late-in-epoch"),
        pytest.param(["val:0"], id="during-validation"),
        pytest.param(["batch:0:3", "val:1"], id="twice-in-one-run"),
        pytest.param(["batch:2:4", "final"], id="mosaic-closed-then-final-eval"),
    ],
)
def test_sigterm_then_resume_gives_identical_weights(tmp_path, tiny_dataset, baseline_run, points):
    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_dataset)
    for point in points:
        assert run_worker(spec, CUTLINE_FAULT_SIGTERM_AT=point) == protocol.EXIT_PREEMPTED
        checkpoint = events_of(run_dir, "checkpoint")[-1]
        assert checkpoint["reason"] == "preempt"
        assert (run_dir / protocol.RESUME_CHECKPOINT).exists()
    assert run_worker(spec) == protocol.EXIT_FINISHED

    starts = events_of(run_dir, "started")
    assert [s["resumed"] for s in starts] == [False] + [True] * len(points)
    assert len(events_of(run_dir, "preempted")) == len(points)
    assert_same_as_baseline(run_dir, baseline_run)


def test_resume_continues_at_the_next_batch(tmp_path, tiny_dataset):
    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_dataset, epochs=1)
    assert run_worker(spec, CUTLINE_FAULT_SIGTERM_AT="batch:0:5") == protocol.EXIT_PREEMPTED
    assert run_worker(spec) == protocol.EXIT_FINISHED
    batches = [(e["epoch"], e["batch"]) for e in events_of(run_dir, "batch")]
    assert batches == [(0, i) for i in range(8)], "batches 0-4, stop, then 5-7: none repeated, none skipped"


def test_sigterms_at_random_moments_until_done(tmp_path, tiny_dataset, baseline_run):
    """A parent process keeps preempting the job at random moments; the result must not change."""
    rng = random.Random(int(os.environ.get("CUTLINE_TEST_SEED", "20261203")))
    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_dataset)
    outcomes = []
    for attempt in range(12):
        proc = start_worker(spec)
        seen = len(events_of(run_dir, "batch"))
        if attempt == 0:
            time.sleep(rng.uniform(0.2, 1.5))  # lands during imports/setup
        else:
            deadline = time.monotonic() + 120
            while len(events_of(run_dir, "batch")) == seen and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 2.5))  # anywhere in training, validation or saving
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        outcomes.append(rc)
        if rc == protocol.EXIT_FINISHED:
            break
        # -SIGTERM: the signal beat the interpreter to its handlers; nothing had started, nothing is lost.
        assert rc in (protocol.EXIT_PREEMPTED, -signal.SIGTERM), (run_dir / protocol.LOG_FILE).read_text()[-3000:]
    else:
        assert run_worker(spec) == protocol.EXIT_FINISHED
        outcomes.append(0)

    assert outcomes.count(protocol.EXIT_PREEMPTED) >= 3, outcomes
    assert events_of(run_dir, "finished")[-1]["epochs"] == 3
    assert len(results_without_time(run_dir)) == 3
    assert_same_as_baseline(run_dir, baseline_run)


def test_kill_9_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path, tiny_dataset, baseline_run):
    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_dataset)
    resume = run_dir / protocol.RESUME_CHECKPOINT
    assert run_worker(spec, CUTLINE_FAULT_SIGTERM_AT="batch:0:3") == protocol.EXIT_PREEMPTED
    before = resume.read_bytes()

    # Resume, ask for a safety checkpoint, and kill -9 while it is half written.
    proc = start_worker(spec, CUTLINE_FAULT_SLOW_CHECKPOINT_WRITE_S="30")
    partial = resume.with_name(resume.name + ".tmp")
    deadline = time.monotonic() + 120
    while not events_of(run_dir, "batch")[3:] and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert partial.exists(), "the safety checkpoint never started"
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL

    assert resume.read_bytes() == before, "the previous checkpoint is untouched"
    state = torch.load(resume, map_location="cpu", weights_only=False)
    assert (state["epoch"], state["batches_done"]) == (0, 3)
    assert run_worker(spec) == protocol.EXIT_FINISHED
    assert_same_as_baseline(run_dir, baseline_run)


def test_safety_checkpoint_keeps_training(tmp_path, tiny_dataset):
    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_dataset, epochs=1)
    proc = start_worker(spec)
    deadline = time.monotonic() + 120
    while not events_of(run_dir, "batch") and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == protocol.EXIT_FINISHED
    safety = [e for e in events_of(run_dir, "checkpoint") if e["reason"] == "safety"]
    assert len(safety) == 1 and safety[0]["bytes"] > 1_000_000 and safety[0]["seconds"] > 0
    assert len(events_of(run_dir, "batch")) == 8
