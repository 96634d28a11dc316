"""The same queue on a real single-node Slurm (munged, slurmctld, slurmd started by the test):
Slurm preempts the low job for the urgent one, the worker checkpoints and exits 75, Slurm requeues
it (RequeueExit), and it resumes from its checkpoint to the weights of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from engine import paths
from engine.core import Engine
from engine.jobs import JobState
from engine.slurm_executor import SlurmExecutor

from engine_runs import TEST_SETTINGS, overlaps, run_events, tiny_job, training_intervals, wait_for
from slurm_cluster import LocalSlurm, available
from test_engine_e2e import assert_same_as_baseline
from worker_runs import TINY_TRAIN_ARGS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a loaded machine trains slowly
ENDED = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


@pytest.fixture
def cluster(tmp_path):
    why = available()
    if why:
        pytest.skip(why)
    slurm = LocalSlurm(tmp_path / "slurm").start()
    yield slurm
    slurm.stop()


def slurm_engine(tmp_path, cluster, settings: dict | None = None, worker_faults: dict | None = None,
                 **executor_options) -> Engine:
    """Local CPU slot and a Slurm pool side by side; jobs choose the pool with device "slurm"."""
    home = paths.cutline_home(tmp_path / "home")
    executor_options.setdefault("partitions", {"protected": "safe"})
    slurm = SlurmExecutor(home, paths.ultralytics_config_dir(home), cpus_per_task=cluster.cpus, env=cluster.env,
                          worker_env={"CUTLINE_FORBID_NETWORK": "1", "CUTLINE_FAULT_BATCH_DELAY_S": "0.1",
                                      **(worker_faults or {})},
                          **executor_options)
    return Engine(home, use_nvml=False, pools={"slurm": slurm}, settings={**TEST_SETTINGS, **(settings or {})},
                  worker_env={"CUTLINE_FORBID_NETWORK": "1"})


def on_slurm(data, name: str, priority: str = "normal", **extra) -> dict:
    return tiny_job(data, name, priority, device_kind="slurm", **extra)


def test_slurm_preempts_and_requeues_the_low_job_which_resumes_exactly(tmp_path, cluster, tiny_dataset, baseline_run):
    engine = slurm_engine(tmp_path, cluster).start()
    try:
        low = engine.ops.submit(**on_slurm(tiny_dataset, "nightly experiment", "low", owner="bob"))
        wait_for(lambda: (engine.store.job(low.id).batch or 0) >= 2, 120, "the low job to train on Slurm")
        low_slurm_id = engine.store.job(low.id).worker["slurm_job_id"]

        urgent = engine.ops.submit(**on_slurm(tiny_dataset, "line 3 retrain", "urgent", owner="carol"),
                                   operator="carol", reason="line 3 crack escapes")
        # Meanwhile the local CPU slot trains a job of its own, untouched by Slurm's preemption.
        local = engine.ops.submit(**tiny_job(tiny_dataset, "local job", "low", owner="dana"))
        wait_for(lambda: engine.store.job(low.id).preemptions == 1, 60, "Slurm to preempt the low job")
        wait_for(lambda: all(engine.store.job(j).state in ENDED for j in (low.id, urgent.id, local.id)), 300,
                 "all three jobs to end")

        low, urgent, local = engine.store.job(low.id), engine.store.job(urgent.id), engine.store.job(local.id)
        assert local.state is JobState.FINISHED and local.preemptions == 0 and local.worker["executor"] == "local"
        assert low.device_id is None and run_events(local.run_dir, "started")[0]["device"] == "cpu"
        assert (low.state, urgent.state) == (JobState.FINISHED, JobState.FINISHED), (low.error, urgent.error)
        assert low.worker["slurm_job_id"] == low_slurm_id  # requeued by Slurm: the same Slurm job
        assert urgent.worker["partition"] == "high" and low.worker["partition"] == "low"
        assert overlaps(training_intervals(low.run_dir), training_intervals(urgent.run_dir)) == []
        checkpoint = [e for e in run_events(low.run_dir, "checkpoint") if e["reason"] == "preempt"][0]
        resumed = run_events(low.run_dir, "training")[1]
        assert (resumed["start_epoch"], resumed["start_batch"]) == (checkpoint["epoch"], checkpoint["batch"])
        assert_same_as_baseline(low.run_dir, baseline_run)

        jump = next(e for e in engine.audit.entries() if e.kind == "jump")
        preempt = next(e for e in engine.audit.entries() if e.kind == "preempt")
        assert jump.reason == "line 3 crack escapes" and jump.job_id == str(urgent.id)
        # Slurm carried out the jump: the preemption is the jump's (its operator and reason, counted
        # against the cap), and names both Slurm jobs.
        assert preempt.operator == "carol" and "slurm preempted job" in preempt.reason
        assert "line 3 crack escapes" in preempt.reason and preempt.details["checkpointed"] is True
        assert preempt.details["cluster_job"]["slurm_job_id"] == low_slurm_id
        assert [f["job"] for f in preempt.details["for_jobs"]] == [urgent.id] and preempt.details["jump_seq"] == jump.seq
        assert preempt.details["for_jobs"][0]["cluster_job"]["slurm_job_id"] == urgent.worker["slurm_job_id"]
        assert [n.kind for n in engine.store.notifications(owner="bob")] == ["preempted", "resumed", "finished"]
    finally:
        engine.shutdown()


def test_a_rejected_sbatch_keeps_the_job_queued_with_the_error(tmp_path, cluster, tiny_dataset):
    engine = slurm_engine(tmp_path, cluster, partitions={"normal": "no-such-partition"}).start()
    try:
        job = engine.ops.submit(**on_slurm(tiny_dataset, "misrouted"))
        queued = wait_for(lambda: (j := engine.store.job(job.id)).error and j, 30, "the refusal")
        assert queued.state in (JobState.QUEUED, JobState.STARTING)
        assert "Slurm refused the job (sbatch)" in queued.error and "partition" in queued.error.lower()
        assert "still queued" in engine.store.notifications()[-1].message
        assert engine.why_waiting()[job.id].startswith("could not start its worker: Slurm refused")
        assert engine.store.job(job.id).state is not JobState.FAILED
    finally:
        engine.shutdown()


def slurm_priority(cluster, slurm_id: str) -> int:
    """The priority Slurm starts a pending job by (higher first), from squeue."""
    out = subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%Q"], env={**os.environ, **cluster.env},
                         capture_output=True, text=True, timeout=10).stdout.strip()
    assert out, subprocess.run(["squeue", "-a", "-o", "%i %j %T %r %Q %y"], env={**os.environ, **cluster.env},
                               capture_output=True, text=True, timeout=10).stdout
    return int(out)


def test_pausing_a_pending_slurm_job_pauses_it_and_cancelling_a_running_one_cancels_it(tmp_path, cluster,
                                                                                        tiny_dataset):
    # Slow batches: the first job is still training when the others have been reordered and paused.
    engine = slurm_engine(tmp_path, cluster, worker_faults={"CUTLINE_FAULT_BATCH_DELAY_S": "1"}).start()
    try:
        first = engine.ops.submit(**on_slurm(tiny_dataset, "first"))
        second = engine.ops.submit(**on_slurm(tiny_dataset, "second"))  # the node fits one: it pends
        wait_for(lambda: engine.store.job(first.id).state is JobState.RUNNING, 120, "the first job to run")
        wait_for(lambda: (engine.store.job(second.id).worker or {}).get("slurm_job_id"), 30, "the second's sbatch")
        assert "pending in Slurm" in engine.why_waiting()[second.id]

        # Slurm starts pending jobs in Cutline's order: each one's nice is its place among them, so
        # moving a pending job up in Cutline raises its priority in Slurm above the one it passed.
        third = engine.ops.submit(**on_slurm(tiny_dataset, "third"))
        ids = {j: wait_for(lambda j=j: (engine.store.job(j).worker or {}).get("slurm_job_id"), 30, "an sbatch")
               for j in (second.id, third.id)}
        assert slurm_priority(cluster, ids[second.id]) > slurm_priority(cluster, ids[third.id])
        engine.ops.move(third.id, before=second.id, reason="needed before the second")
        wait_for(lambda: slurm_priority(cluster, ids[third.id]) > slurm_priority(cluster, ids[second.id]), 30,
                 "Slurm to put the third job first")
        engine.ops.cancel(third.id)

        engine.ops.pause(second.id)
        paused = wait_for(lambda: (j := engine.store.job(second.id)).state is JobState.PAUSED and j, 60, "the pause")
        assert paused.epoch is None and paused.lost_workers == 0  # never ran; not finished, not lost
        engine.ops.cancel(first.id)
        cancelled = wait_for(lambda: (j := engine.store.job(first.id)).state is JobState.CANCELLED and j, 90,
                             "the cancel")
        assert run_events(cancelled.run_dir, "preempted")  # it checkpointed first
        kinds = {n.kind for n in engine.store.notifications()}
        assert "finished" not in kinds
    finally:
        engine.shutdown()


def test_a_job_cancelled_on_the_cluster_by_an_administrator_is_paused_with_its_checkpoint_not_resubmitted(
        tmp_path, cluster, tiny_dataset, baseline_run):
    engine = slurm_engine(tmp_path, cluster).start()
    try:
        job = engine.ops.submit(**on_slurm(tiny_dataset, "nightly experiment", "low", owner="bob"))
        wait_for(lambda: (engine.store.job(job.id).batch or 0) >= 2, 120, "the job to train on Slurm")
        slurm_id = engine.store.job(job.id).worker["slurm_job_id"]

        subprocess.run(["scancel", slurm_id], env={**os.environ, **cluster.env}, check=True)  # outside Cutline
        paused = wait_for(lambda: (j := engine.store.job(job.id)).state is JobState.PAUSED and j, 60, "the pause")
        assert paused.preemptions == 0 and paused.lost_workers == 0 and paused.checkpoint
        assert run_events(paused.run_dir, "preempted")  # the worker checkpointed in Slurm's kill wait
        entry = engine.audit.entries()[-1]
        assert (entry.kind, entry.operator, entry.job_id) == ("pause", "slurm", str(job.id))
        assert "scancel" in entry.reason and entry.details["cluster_job"]["slurm_job_id"] == slurm_id
        assert [n.kind for n in engine.store.notifications(owner="bob")] == ["paused"]
        time.sleep(3)  # a few engine ticks: nothing resubmits it behind the administrator's back
        assert engine.store.job(job.id).state is JobState.PAUSED

        engine.ops.resume(job.id)  # the operator decides: it runs again, from its checkpoint
        done = wait_for(lambda: (j := engine.store.job(job.id)).state in ENDED and j, 300, "the resumed job")
        assert done.state is JobState.FINISHED, done.error
        assert done.worker["slurm_job_id"] != slurm_id
        checkpoint = [e for e in run_events(done.run_dir, "checkpoint") if e["reason"] == "preempt"][0]
        resumed = run_events(done.run_dir, "training")[1]
        assert (resumed["start_epoch"], resumed["start_batch"]) == (checkpoint["epoch"], checkpoint["batch"])
        assert_same_as_baseline(done.run_dir, baseline_run)
        assert engine.audit.verify().ok
    finally:
        engine.shutdown()


def batches_done(engine, job_id: int) -> int:
    job = engine.store.job(job_id)
    return (job.epoch or 0) * (job.batches or 0) + (job.batch or 0)


def test_past_the_daily_cap_an_urgent_job_waits_where_it_preempts_no_one(tmp_path, cluster, tiny_dataset):
    engine = slurm_engine(tmp_path, cluster, settings={"daily_preemption_cap": 0}).start()
    try:
        low = engine.ops.submit(**on_slurm(tiny_dataset, "nightly experiment", "low", owner="bob"))
        wait_for(lambda: batches_done(engine, low.id) >= 2, 120, "the low job to train on Slurm")
        urgent = engine.ops.submit(**on_slurm(tiny_dataset, "line 3 retrain", "urgent", owner="carol"),
                                   operator="carol", reason="line 3 crack escapes")
        waiting = wait_for(lambda: (j := engine.store.job(urgent.id)).worker and j, 30, "the urgent job's sbatch")
        assert waiting.worker["partition"] == "safe" and waiting.worker["route"] == "urgent-no-preempt"
        assert "daily preemption cap reached (0 of 0 today" in engine.why_waiting()[urgent.id]
        start = batches_done(engine, low.id)
        wait_for(lambda: batches_done(engine, low.id) >= start + 6, 120, "the low job to keep training")
        assert engine.store.job(low.id).preemptions == 0 and engine.store.job(low.id).state is JobState.RUNNING
        assert engine.store.job(urgent.id).state is JobState.STARTING  # still pending in Slurm
    finally:
        engine.shutdown()  # the cluster fixture cancels what is left in Slurm


def test_a_job_preempted_the_limit_times_is_moved_where_slurm_cannot_preempt_it_again(tmp_path, cluster,
                                                                                       tiny_dataset):
    engine = slurm_engine(tmp_path, cluster, settings={"max_preemptions_per_job": 1}).start()
    try:
        low = engine.ops.submit(**on_slurm(tiny_dataset, "nightly experiment", "low", owner="bob"))
        wait_for(lambda: batches_done(engine, low.id) >= 2, 120, "the low job to train on Slurm")
        short = {**on_slurm(tiny_dataset, "line 3 retrain", "urgent", owner="carol"),
                 "train_args": {**TINY_TRAIN_ARGS, "epochs": 1}}
        first = engine.ops.submit(**short, operator="carol", reason="line 3 crack escapes")
        wait_for(lambda: engine.store.job(low.id).preemptions == 1, 60, "Slurm to preempt the low job")
        moved = wait_for(lambda: (j := engine.store.job(low.id)).worker.get("partition") == "safe" and j, 30,
                         "the protected job to move to the safe partition")
        assert moved.worker["route"] == "protected"

        # Cutline closes and reopens: cluster jobs keep their places, and the preemption it already
        # recorded is not read again from the event stream (it would count twice against the cap).
        engine.shutdown()
        engine = slurm_engine(tmp_path, cluster, settings={"max_preemptions_per_job": 1}).start()
        time.sleep(2)  # some engine ticks over the adopted jobs' event streams
        assert engine.store.job(low.id).preemptions == 1
        assert [e.kind for e in engine.audit.entries()].count("preempt") == 1
        wait_for(lambda: engine.store.job(first.id).state is JobState.FINISHED, 180, "the first urgent job")
        wait_for(lambda: engine.store.job(low.id).state is JobState.RUNNING, 120, "the low job to resume")

        second = engine.ops.submit(**on_slurm(tiny_dataset, "line 4 retrain", "urgent", owner="carol"),
                                   operator="carol", reason="line 4 crack escapes")
        wait_for(lambda: engine.store.job(second.id).worker, 30, "the second urgent job's sbatch")
        assert engine.store.job(second.id).worker["partition"] == "high"  # the cap has room: it may preempt
        start = batches_done(engine, low.id)
        wait_for(lambda: batches_done(engine, low.id) >= start + 6, 120, "the protected job to keep training")
        assert engine.store.job(low.id).preemptions == 1 and engine.store.job(second.id).state is JobState.STARTING
    finally:
        engine.shutdown()


def test_a_job_cancelled_on_the_cluster_while_cutline_was_closed_is_paused_at_the_next_start(
        tmp_path, cluster, tiny_dataset):
    engine = slurm_engine(tmp_path, cluster).start()
    job = engine.ops.submit(**on_slurm(tiny_dataset, "nightly experiment", "low", owner="bob"))
    wait_for(lambda: (engine.store.job(job.id).batch or 0) >= 2, 120, "the job to train on Slurm")
    slurm_id = engine.store.job(job.id).worker["slurm_job_id"]
    engine.shutdown()  # cluster jobs keep running while Cutline is closed

    slurm_env = {**os.environ, **cluster.env}
    subprocess.run(["scancel", slurm_id], env=slurm_env, check=True)
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", slurm_id], env=slurm_env, capture_output=True,
                                        text=True).stdout.strip(), 60, "the job to leave Slurm's queue")
    engine = slurm_engine(tmp_path, cluster).start()
    try:
        paused = engine.store.job(job.id)
        assert paused.state is JobState.PAUSED and paused.lost_workers == 0, engine.recovery_report
        assert paused.checkpoint and run_events(paused.run_dir, "preempted")
        entry = engine.audit.entries()[-1]
        assert (entry.kind, entry.operator) == ("pause", "slurm") and "scancel" in entry.reason
        time.sleep(2)
        assert engine.store.job(job.id).state is JobState.PAUSED  # not resubmitted
    finally:
        engine.shutdown()


@pytest.mark.parametrize("saves", [True, False], ids=["checkpointed", "killed-before-saving"])
def test_a_requeue_by_the_cluster_with_no_urgent_job_is_audited_as_a_requeue_and_not_counted(
        tmp_path, cluster, tiny_dataset, saves):
    """An administrator's `scontrol requeue` (or a node failure) stops a job that no Cutline jump asked
    for: it is a requeue, not a preemption counted against the cap. A worker the cluster kills before it
    can save (it ignores SIGTERM here) resumes from its last checkpoint all the same."""
    faults = {} if saves else {"CUTLINE_FAULT_IGNORE_STOP": "1"}
    engine = slurm_engine(tmp_path, cluster, worker_faults=faults).start()
    try:
        job = engine.ops.submit(**on_slurm(tiny_dataset, "nightly experiment", "low", owner="bob"))
        wait_for(lambda: batches_done(engine, job.id) >= 3, 120, "the job to train on Slurm")
        slurm_id = engine.store.job(job.id).worker["slurm_job_id"]
        subprocess.run(["scontrol", "requeue", slurm_id], env={**os.environ, **cluster.env}, check=True)

        entry = wait_for(lambda: next((e for e in engine.audit.entries() if e.kind == "requeue"), None), 120,
                         "the requeue in the audit trail")
        assert entry.operator == "slurm" and "no urgent Cutline job" in entry.reason
        assert entry.details["checkpointed"] is saves and entry.details["for_jobs"] == []
        assert ("before it could save" in entry.reason) is not saves
        assert not [e for e in engine.audit.entries() if e.kind == "preempt"]
        done = wait_for(lambda: (j := engine.store.job(job.id)).state in ENDED and j, 300, "the requeued job to end")
        assert done.state is JobState.FINISHED, done.error
        assert done.preemptions == 0 and done.worker["slurm_job_id"] == slurm_id  # the same Slurm job, requeued
        assert engine.ops.preemptions_today(time.time()) == 0
        assert len(run_events(done.run_dir, "started")) == 2
        # (a worker killed before saving is running again by the time Cutline hears of it: one message)
        assert [n.kind for n in engine.store.notifications(owner="bob")] == (
            ["preempted", "resumed", "finished"] if saves else ["preempted", "finished"])
        assert "requeued by slurm" in engine.store.notifications(owner="bob")[0].message
        assert engine.audit.verify().ok
    finally:
        engine.shutdown()


def test_a_hung_slurm_controller_does_not_hold_up_a_jump_on_the_local_devices(tmp_path, cluster, tiny_dataset):
    """The Slurm queue is read in the background: while slurmctld answers nothing (stopped here with
    SIGSTOP; each squeue would wait out its 15 s timeout), a jump on the local CPU slot is still
    decided at once, and a job for the Slurm pool waits queued with the reason until Slurm is back."""
    engine = slurm_engine(tmp_path, cluster).start()
    controller = next(p for p in cluster.procs if "slurmctld" in p.args[0])
    try:
        low = engine.ops.submit(**{**tiny_job(tiny_dataset, "local experiment", "low", owner="bob"),
                                   "train_args": {**TINY_TRAIN_ARGS, "epochs": 20}})
        wait_for(lambda: (engine.store.job(low.id).batch or 0) >= 2, 120, "the local job to train")
        os.kill(controller.pid, signal.SIGSTOP)
        time.sleep(3)  # a background squeue has waited on the stopped controller for a while by now

        submitted = time.monotonic()
        urgent = engine.ops.submit(**tiny_job(tiny_dataset, "line 3 retrain", "urgent", owner="carol"),
                                   operator="carol", reason="line 3 crack escapes")
        wait_for(lambda: engine.store.job(low.id).stop_sent_at is not None, 10, "the local preemption")
        decided_in = time.monotonic() - submitted
        assert decided_in < 5, f"the jump waited {decided_in:.1f} s on Slurm"  # a squeue in the tick: >= 15 s

        on_cluster = engine.ops.submit(**on_slurm(tiny_dataset, "cluster job"))
        # Not even an sbatch waits on the engine's thread: the victim's exit is handled at once.
        wait_for(lambda: engine.store.job(low.id).state is JobState.QUEUED, 8, "the victim to step aside")
        assert engine.store.job(low.id).checkpoint is not None
        reason = wait_for(lambda: "not submitting until it does" in (r := engine.why_waiting().get(on_cluster.id, ""))
                          and r, 60, "the Slurm job's waiting reason")
        assert engine.store.job(on_cluster.id).state is JobState.QUEUED, reason
        wait_for(lambda: engine.store.job(urgent.id).state in ENDED, 300, "the urgent job to train locally")

        os.kill(controller.pid, signal.SIGCONT)
        running = wait_for(lambda: (j := engine.store.job(on_cluster.id)).state is JobState.RUNNING and j, 120,
                           "the Slurm job to run")
        named = subprocess.run(["squeue", "-h", "-a", "-o", "%j"], env={**os.environ, **cluster.env},
                               capture_output=True, text=True, timeout=10).stdout.split()
        assert named.count(f"{engine.executor.pools['slurm'].name_prefix}{on_cluster.id}") == 1, named  # no twin
        assert running.worker["slurm_job_id"]
    finally:
        os.kill(controller.pid, signal.SIGCONT)
        engine.shutdown()
