"""The engine end to end, with real training on a CPU slot: the urgent job preempts, the victim
resumes at the exact batch and ends with the weights it would have had without the interruption."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine import protocol
from engine.core import Engine, EngineBusy
from engine.jobs import JobState
from engine.store import Store

from engine_runs import TEST_SETTINGS, overlaps, run_events, tiny_job, training_intervals, wait_for
from worker_runs import TINY_TRAIN_ARGS, results_without_time, state_differences

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a loaded machine trains slowly

ENDED = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


def assert_same_as_baseline(run_dir, baseline_run):
    run_dir = Path(run_dir)
    assert (run_dir / protocol.FINAL_STATE).exists(), (run_dir / protocol.LOG_FILE).read_text()[-3000:]
    assert state_differences(baseline_run / protocol.FINAL_STATE, run_dir / protocol.FINAL_STATE) == []
    assert results_without_time(run_dir) == results_without_time(baseline_run)


@pytest.fixture
def engine_factory(tmp_path):
    engines = []

    def make(worker_env: dict | None = None, **settings) -> Engine:
        engine = Engine(tmp_path / "home", use_nvml=False, settings={**TEST_SETTINGS, **settings},
                        worker_env={"CUTLINE_FORBID_NETWORK": "1", **(worker_env or {})})
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        if engine.state != "stopped":
            engine.shutdown(mode="checkpoint", timeout=60)


def test_urgent_job_preempts_low_job_which_resumes_exactly(engine_factory, tiny_dataset, baseline_run):
    engine = engine_factory(warm_standby=True).start()
    low = engine.ops.submit(**tiny_job(tiny_dataset, "nightly experiment", "low", owner="bob"))
    wait_for(lambda: engine.executor.status()["standby_ready"], 90, "the warm standby worker")
    wait_for(lambda: (engine.store.job(low.id).batch or 0) >= 3, 120, "the low job's third batch")

    # The emergency retrain: one call, from a trained model's weights, with the reason.
    urgent = engine.ops.emergency(model=str(baseline_run / "weights" / "best.pt"), data=str(tiny_dataset),
                                  train_args=dict(TINY_TRAIN_ARGS), name="line 3 crack retrain", owner="carol",
                                  operator="carol", reason="line 3 mould crack escapes, ticket 4411")
    engine.wake()
    wait_for(lambda: all(engine.store.job(j).state in ENDED for j in (low.id, urgent.id)), 300, "both jobs to end")

    low, urgent = engine.store.job(low.id), engine.store.job(urgent.id)
    assert low.state is JobState.FINISHED, low.error
    assert urgent.state is JobState.FINISHED, urgent.error
    assert urgent.model.endswith("best.pt") and run_events(urgent.run_dir, "started")[0]["model"] == urgent.model
    assert low.preemptions == 1 and low.epoch == low.epochs - 1 == 2

    # The urgent job took the standby (no second cold import) and never trained alongside the victim.
    assert urgent.worker["standby"] is True
    assert overlaps(training_intervals(low.run_dir), training_intervals(urgent.run_dir)) == []
    low_runs = run_events(low.run_dir, "started")
    assert [e["resumed"] for e in low_runs] == [False, True]
    preempted = run_events(low.run_dir, "preempted")[0]
    resumed = run_events(low.run_dir, "training")[1]
    checkpoint = [e for e in run_events(low.run_dir, "checkpoint") if e["reason"] == "preempt"][0]
    assert (resumed["start_epoch"], resumed["start_batch"]) == (checkpoint["epoch"], checkpoint["batch"])
    assert preempted["checkpoint"].endswith(protocol.RESUME_CHECKPOINT)

    # Same weights as if it had never been interrupted.
    assert_same_as_baseline(low.run_dir, baseline_run)

    # The audit trail holds the jump (reason, operator) and, before the victim stopped, the preemption.
    entries = engine.audit.entries()
    jump = next(e for e in entries if e.kind == "emergency" and e.job_id == str(urgent.id))
    assert jump.reason == "line 3 mould crack escapes, ticket 4411" and jump.operator == "carol"
    preempt = next(e for e in entries if e.kind == "preempt")
    assert preempt.job_id == str(low.id) and preempt.details["for_job"] == urgent.id
    assert preempt.details["jump_seq"] == jump.seq and preempt.operator == "carol"
    assert preempt.details["victim"]["batch"] >= 3
    assert preempt.ts < preempted["ts"]
    assert engine.audit.verify().ok

    # The victim's owner was told, in order: preempted, resumed, finished.
    kinds = [n.kind for n in engine.store.notifications(owner="bob")]
    assert kinds == ["preempted", "resumed", "finished"]
    assert "line 3 mould crack" in engine.store.notifications(owner="bob")[0].message


def test_stuck_worker_is_killed_at_the_deadline_and_resumes_from_its_safety_checkpoint(
    engine_factory, tiny_dataset, baseline_run
):
    # The tiny job trains for only a few seconds: slowed to >= 0.25 s a batch (same numbers), a
    # safety checkpoint every second and the kill half a second after the stop request, so the
    # kill lands while it is still training, even on a loaded machine.
    engine = engine_factory(stop_grace_s=0.5, safety_checkpoint_interval_s=1.0,
                            worker_env={"CUTLINE_FAULT_IGNORE_STOP": "1",
                                        "CUTLINE_FAULT_BATCH_DELAY_S": "0.25"}).start()
    low = engine.ops.submit(**tiny_job(tiny_dataset, "stuck", "low"))
    wait_for(lambda: any(e["reason"] == "safety" for e in run_events(engine.store.job(low.id).run_dir, "checkpoint")),
             120, "a safety checkpoint", interval=0.02)
    safety = [e for e in run_events(low.run_dir, "checkpoint") if e["reason"] == "safety"][-1]

    urgent = engine.ops.submit(**tiny_job(tiny_dataset, "urgent", "urgent"), reason="drill: hung worker")
    engine.wake()
    # The kill is recorded in the transition that settles it (killed_at is cleared once settled).
    wait_for(lambda: any("killed by SIGKILL" in t["detail"] for t in engine.store.transitions(low.id)), 30,
             "the kill at the grace deadline")
    wait_for(lambda: all(engine.store.job(j).state in ENDED for j in (low.id, urgent.id)), 300, "both jobs to end")

    low = engine.store.job(low.id)
    assert low.state is JobState.FINISHED and engine.store.job(urgent.id).state is JobState.FINISHED
    assert run_events(low.run_dir, "preempted") == []  # it never stepped aside by itself
    trainings = run_events(low.run_dir, "training")
    assert len(trainings) == 2
    # Resumed no earlier than the last safety checkpoint before the kill (later ones may exist).
    resumed_at = (trainings[1]["start_epoch"], trainings[1]["start_batch"])
    assert resumed_at >= (safety["epoch"], safety["batch"])
    assert low.lost_workers == 0  # killed on purpose, not lost
    assert_same_as_baseline(low.run_dir, baseline_run)


def test_closing_checkpoints_running_jobs_and_the_next_start_resumes_them(
    engine_factory, tiny_dataset, baseline_run
):
    engine = engine_factory().start()
    job = engine.ops.submit(**tiny_job(tiny_dataset, "closing"))
    wait_for(lambda: (engine.store.job(job.id).batch or 0) >= 2 and engine.store.job(job.id).epoch == 1, 120,
             "the second epoch")
    engine.shutdown(mode="checkpoint")
    job_after_close = Store(engine.home).job(job.id)
    assert job_after_close.state is JobState.QUEUED and job_after_close.preemptions == 0

    second = engine_factory().start()
    with pytest.raises(EngineBusy):
        engine_factory().start()  # one engine per home
    wait_for(lambda: second.store.job(job.id).state in ENDED, 240, "the job to finish after restart")
    assert second.store.job(job.id).state is JobState.FINISHED
    assert [e["resumed"] for e in run_events(job.run_dir, "started")] == [False, True]
    assert_same_as_baseline(job.run_dir, baseline_run)
