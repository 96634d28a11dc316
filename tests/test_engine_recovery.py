"""kill -9 of the engine at the worst moments: its workers live on (own sessions), the next start
adopts or settles them, and nothing is lost or run twice. The engine runs as `main.py headless`,
a real separate process, killed with a real SIGKILL."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from engine import runlock
from engine.jobs import JobState
from engine.operations import Operations
from engine.policy import DeviceView
from engine.store import Store

from engine_runs import (
    TEST_SETTINGS, overlaps, run_events, start_headless, stop_headless, tiny_job, training_intervals, wait_for,
)
from test_engine_e2e import assert_same_as_baseline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a loaded machine trains slowly

ENDED = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


def open_queue(home: Path) -> Operations:
    store = Store(home)
    with store.lock:
        audit = store.audit_trail()
    return Operations(store, audit, [DeviceView("cpu0", "cpu")])


def kill_engine(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_engine_killed_mid_training_adopts_the_live_worker(tmp_path, tiny_dataset, baseline_run):
    home = tmp_path / "home"
    ops = open_queue(home)
    ops.store.put_settings(TEST_SETTINGS)
    job = ops.submit(**tiny_job(tiny_dataset, "adopt me"))
    engine = start_headless(home)
    try:
        wait_for(lambda: (ops.store.job(job.id).batch or 0) >= 2, 120, "training to start")
        worker_pid = ops.store.job(job.id).worker["pid"]
        kill_engine(engine)
        assert runlock.holder(job.run_dir)["pid"] == worker_pid  # the worker trains on, unsupervised

        engine = start_headless(home)
        wait_for(lambda: ops.store.job(job.id).state in ENDED, 240, "the job to end")
    finally:
        assert stop_headless(engine) == 0
    job = ops.store.job(job.id)
    assert job.state is JobState.FINISHED, job.error
    started = run_events(job.run_dir, "started")
    assert [e["pid"] for e in started] == [worker_pid]  # adopted, never started twice
    assert job.lost_workers == 0
    assert "adopted its live worker" in (home / "headless.log").read_text()
    assert_same_as_baseline(job.run_dir, baseline_run)


def test_engine_killed_during_a_preemption_loses_and_duplicates_nothing(tmp_path, tiny_dataset, baseline_run):
    home = tmp_path / "home"
    ops = open_queue(home)
    ops.store.put_settings(TEST_SETTINGS)
    low = ops.submit(**tiny_job(tiny_dataset, "victim", "low"))
    # Slowed (same numbers) so the victim is surely still training when the urgent job arrives.
    engine = start_headless(home, CUTLINE_FAULT_BATCH_DELAY_S="0.1")
    try:
        wait_for(lambda: (ops.store.job(low.id).batch or 0) >= 2, 120, "the low job to train")
        # Submitted from this process while the engine runs elsewhere: picked up within a tick.
        urgent = ops.submit(**tiny_job(tiny_dataset, "urgent", "urgent"), reason="recovery drill")
        wait_for(lambda: ops.store.job(low.id).stop_sent_at is not None, 30, "the stop request", interval=0.01)
        kill_engine(engine)  # the victim is saving; the urgent worker waits at its gate

        wait_for(lambda: runlock.holder(low.run_dir) is None, 60, "the victim to exit by itself")
        engine = start_headless(home, CUTLINE_FAULT_BATCH_DELAY_S="0.1")
        wait_for(lambda: all(ops.store.job(j).state in ENDED for j in (low.id, urgent.id)), 300, "both jobs to end")
    finally:
        assert stop_headless(engine) == 0
    low, urgent = ops.store.job(low.id), ops.store.job(urgent.id)
    assert (low.state, urgent.state) == (JobState.FINISHED, JobState.FINISHED), (low.error, urgent.error)
    assert low.preemptions == 1 and low.lost_workers == 0 and urgent.lost_workers == 0
    assert overlaps(training_intervals(low.run_dir), training_intervals(urgent.run_dir)) == []
    # The victim's checkpoint was the one it resumed from, and the result is the uninterrupted one.
    checkpoint = [e for e in run_events(low.run_dir, "checkpoint") if e["reason"] == "preempt"][0]
    resumed = run_events(low.run_dir, "training")[1]
    assert (resumed["start_epoch"], resumed["start_batch"]) == (checkpoint["epoch"], checkpoint["batch"])
    assert_same_as_baseline(low.run_dir, baseline_run)
    kinds = [e.kind for e in ops.audit.entries()]
    assert kinds.count("preempt") == 1 and ops.audit.verify().ok
