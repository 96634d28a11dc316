"""Queue operations on a real SQLite store: validation, order, jumps and yields, holds, audit.
No training here; the engine's own tests run workers."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from engine import base_weights
from engine.core import Engine
from engine.jobs import JobEvent, JobState, Priority
from engine.operations import OperationError, Operations
from engine.policy import DeviceView
from engine.spec import SpecError
from engine.store import StaleState, Store
from engine.timers import Timers, add_schedule, next_fire

from engine_runs import tiny_job, wait_for, zip_weights


@pytest.fixture
def ops(tmp_path) -> Operations:
    store = Store(tmp_path / "home")
    with store.lock:
        audit = store.audit_trail()
    return Operations(store, audit, [DeviceView("cpu0", "cpu")])


def ids(jobs) -> list[int]:
    return [j.id for j in jobs]


def fields_of(excinfo) -> list[str]:
    return [p.field for p in excinfo.value.problems]


@pytest.mark.parametrize(
    "change, field, words",
    [
        (dict(data="/nowhere/data.yaml"), "data", "not found"),
        (dict(model="yolov8n.pt"), "model", "never downloads"),
        (dict(model="resnet.onnx"), "model", ".pt weights file or a .yaml"),
        (dict(train_args={"epocs": 3}), "epocs", "did you mean 'epochs'"),
        (dict(train_args={"device": "0"}), "device", "Cutline assigns the device"),
        (dict(train_args={"epochs": 0}), "epochs", "integer >= 1"),
        (dict(train_args={"imgsz": 8}), "imgsz", "at least 32"),
        (dict(device_kind="gpu"), "device", "no GPU device"),
        (dict(device_kind="tpu"), "device", "expected any, gpu or cpu"),
        (dict(name="  "), "name", "needs a name"),
        (dict(priority="critical"), "priority", "unknown priority"),
        (dict(priority="urgent"), "reason", "give the reason"),
        (dict(priority=True), "priority", "unknown priority"),
        (dict(owner=5), "owner", "a user name"),
        (dict(train_args={"batch": 0}), "batch", "batch size >= 1"),
        (dict(train_args={"lr0": float("nan")}), "lr0", "finite number"),
        (dict(train_args={"momentum": "abc"}), "momentum", "between 0 and 1"),
        (dict(train_args={"momentum": 1.5}), "momentum", "between 0 and 1"),
        (dict(train_args={"optimizer": "Adamm"}), "optimizer", "unknown optimizer 'Adamm'"),
        (dict(train_args={"seed": "s"}), "seed", "whole number"),
        (dict(train_args={"cos_lr": "yes"}), "cos_lr", "true or false"),
        (dict(train_args={"amp": 3}), "amp", "'fp16'"),
        (dict(train_args={"freeze": [[0, 1]]}), "freeze", "flat list"),
        (dict(train_args={"momentum": json.loads("[" * 300 + "]" * 300)}), "momentum", "flat list"),
        (dict(train_args={"cache": Path("/tmp")}), "cache", "got PosixPath"),
        (dict(train_args={7: 1}), "train_args", "names must be text"),
    ],
)
def test_every_bad_submission_names_its_field_and_enqueues_nothing(ops, tiny_dataset, change, field, words):
    ops.submit(**tiny_job(tiny_dataset, "already queued"))
    before = ops.store.jobs()
    with pytest.raises(SpecError) as excinfo:
        ops.submit(**{**tiny_job(tiny_dataset, "bad"), **change})
    assert field in fields_of(excinfo)
    message = next(p.message for p in excinfo.value.problems if p.field == field)
    assert words in message
    assert ops.store.jobs() == before
    assert [e.kind for e in ops.audit.entries()] == ["submit"]


def test_several_problems_are_reported_together(ops, tiny_dataset):
    with pytest.raises(SpecError) as excinfo:
        ops.submit(**{**tiny_job(tiny_dataset, ""), "model": "x.pt", "train_args": {"batch": 0}})
    assert {"name", "model", "batch"} <= set(fields_of(excinfo))


def test_queue_order_is_class_then_operator_order(ops, tiny_dataset):
    a = ops.submit(**tiny_job(tiny_dataset, "a", "low"))
    b = ops.submit(**tiny_job(tiny_dataset, "b", "normal"))
    c = ops.submit(**tiny_job(tiny_dataset, "c", "high"))
    d = ops.submit(**tiny_job(tiny_dataset, "d", "normal"))
    assert ids(ops.queue()) == [c.id, b.id, d.id, a.id]
    assert ops.store.job(b.id).run_dir.endswith("0002-b")


def test_moving_up_is_a_jump_and_needs_a_reason_moving_down_is_a_yield(ops, tiny_dataset):
    a, b, c = (ops.submit(**tiny_job(tiny_dataset, n)) for n in "abc")
    with pytest.raises(OperationError) as excinfo:
        ops.move(c.id, before=a.id)
    assert excinfo.value.field == "reason"
    assert ids(ops.queue()) == [a.id, b.id, c.id]  # unchanged

    result = ops.move(c.id, before=a.id, operator="dana", reason="customer audit tomorrow")
    assert result.kind == "jump" and result.passed == (a.id, b.id)
    assert ids(ops.queue()) == [c.id, a.id, b.id]
    entry = ops.audit.entries()[-1]
    assert (entry.kind, entry.operator, entry.reason, entry.job_id) == ("jump", "dana", "customer audit tomorrow", str(c.id))
    assert entry.details["passed"] == [a.id, b.id] and entry.details["to_position"] == 1

    result = ops.move(c.id, after=b.id)  # down again: a yield, no reason asked
    assert result.kind == "yield" and ids(ops.queue()) == [a.id, b.id, c.id]
    assert ops.audit.entries()[-1].kind == "yield"


def test_moving_past_a_higher_class_takes_that_class(ops, tiny_dataset):
    low = ops.submit(**tiny_job(tiny_dataset, "low", "low"))
    high = ops.submit(**tiny_job(tiny_dataset, "high", "high"))
    result = ops.move(low.id, before=high.id, reason="needed first")
    assert result.job.priority is Priority.HIGH and ids(ops.queue()) == [low.id, high.id]
    assert ops.audit.entries()[-1].details["from_priority"] == "low"


def test_priority_raise_is_a_jump_lowering_is_a_yield(ops, tiny_dataset):
    a = ops.submit(**tiny_job(tiny_dataset, "a"))
    b = ops.submit(**tiny_job(tiny_dataset, "b"))
    with pytest.raises(OperationError):
        ops.set_priority(b.id, "high")
    assert ops.store.job(b.id).priority is Priority.NORMAL
    ops.set_priority(b.id, "high", reason="release candidate")
    assert ids(ops.queue()) == [b.id, a.id]
    assert ops.audit.entries()[-1].kind == "priority"
    assert ops.set_priority(b.id, "low").kind == "yield"
    assert ids(ops.queue()) == [a.id, b.id]
    with pytest.raises(OperationError, match="unknown priority"):
        ops.set_priority(a.id, "asap", reason="x")


def test_jump_makes_the_job_urgent_and_first(ops, tiny_dataset):
    a = ops.submit(**tiny_job(tiny_dataset, "a", "high"))
    b = ops.submit(**tiny_job(tiny_dataset, "b", "low"))
    with pytest.raises(OperationError):
        ops.jump(b.id, reason="  ")
    ops.jump(b.id, reason="line down", operator="eve")
    assert ids(ops.queue()) == [b.id, a.id] and ops.store.job(b.id).priority is Priority.URGENT


def test_pause_resume_cancel_and_retry(ops, tiny_dataset):
    a = ops.submit(**tiny_job(tiny_dataset, "a"))
    b = ops.submit(**tiny_job(tiny_dataset, "b"))
    assert ops.pause(a.id).state is JobState.PAUSED
    assert ops.resume(a.id).state is JobState.QUEUED
    assert ids(ops.queue()) == [a.id, b.id]  # back in its place
    with pytest.raises(OperationError, match="not paused"):
        ops.resume(a.id)
    assert ops.cancel(b.id).state is JobState.CANCELLED
    with pytest.raises(OperationError, match="nothing to pause"):
        ops.pause(b.id)
    with pytest.raises(OperationError, match="only a failed job"):
        ops.retry(a.id)
    # A running job is asked to stop: PREEMPTING with the target the engine carries out.
    ops.store.transition(a.id, JobEvent.DISPATCH, expect=JobState.QUEUED, device_id="cpu0")
    stopping = ops.pause(a.id)
    assert stopping.state is JobState.PREEMPTING and stopping.stop_target == "paused"
    assert ops.cancel(a.id).stop_target == "cancelled"
    kinds = [e.kind for e in ops.audit.entries()]
    assert kinds.count("pause") == 2 and kinds.count("cancel") == 2 and "resume" in kinds


def test_state_changes_are_compare_and_set(ops, tiny_dataset):
    a = ops.submit(**tiny_job(tiny_dataset, "a"))
    ops.pause(a.id)
    with pytest.raises(StaleState):
        ops.store.transition(a.id, JobEvent.DISPATCH, expect=JobState.QUEUED, device_id="cpu0")
    assert ops.store.job(a.id).state is JobState.PAUSED
    assert [t["event"] for t in ops.store.transitions(a.id)] == ["pause"]


def test_emergency_needs_weights_and_a_reason(ops, tiny_dataset, tmp_path):
    source = ops.submit(**tiny_job(tiny_dataset, "production model"))
    with pytest.raises(SpecError) as excinfo:
        ops.emergency(from_job=source.id, reason="cracks")
    assert fields_of(excinfo) == ["model"] and "no trained weights yet" in excinfo.value.problems[0].message
    torn = tmp_path / "torn.pt"
    torn.write_bytes(zip_weights(tmp_path / "whole.pt").read_bytes()[:-30])  # the zip's directory cut off
    with pytest.raises(SpecError) as excinfo:
        ops.submit(**{**tiny_job(tiny_dataset, "from torn weights"), "model": str(torn)})
    assert fields_of(excinfo) == ["model"] and "not a complete PyTorch checkpoint" in excinfo.value.problems[0].message
    weights = zip_weights(tmp_path / "prod.pt")
    with pytest.raises(SpecError) as excinfo:
        ops.emergency(from_job=source.id, model=str(weights), reason="")
    assert fields_of(excinfo) == ["reason"]
    job = ops.emergency(from_job=source.id, model=str(weights), reason="line 3 cracks", operator="fay")
    assert job.priority is Priority.URGENT and job.data == source.data
    assert job.parent_id == source.id and job.origin == "emergency"
    # It trains from a frozen copy of the weights chosen now, named by their digest.
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert Path(job.model).read_bytes() == weights.read_bytes() and Path(job.model).name.startswith(digest[:16])
    weights.write_bytes(b"overwritten later by the source job")
    assert hashlib.sha256(Path(job.model).read_bytes()).hexdigest() == digest
    entry = ops.audit.entries()[-1]
    assert (entry.kind, entry.reason, entry.operator) == ("emergency", "line 3 cracks", "fay")
    assert entry.details["from_job"] == source.id and entry.details["passed"] == [source.id]
    assert entry.details["weights_from"] == str(weights) and entry.details["weights_sha256"] == digest


def test_emergency_waits_for_weights_being_written_and_refuses_weights_that_never_finish(ops, tiny_dataset, tmp_path):
    """Ultralytics rewrites best.pt in place: an emergency confirmed mid-write must not train from half a file."""
    whole = zip_weights(tmp_path / "whole.pt").read_bytes()
    best = tmp_path / "run" / "weights" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(whole[: len(whole) // 2])
    finish = threading.Timer(0.6, lambda: best.write_bytes(whole))
    finish.start()
    frozen = base_weights.freeze(best, ops.store.home, pause_s=0.1)
    finish.join()
    assert frozen.path.read_bytes() == whole and frozen.sha256 == hashlib.sha256(whole).hexdigest()

    best.write_bytes(whole[:-30])  # a writer that died mid-file
    source = ops.submit(**tiny_job(tiny_dataset, "source"))
    with pytest.raises(SpecError) as excinfo:
        ops.emergency(from_job=source.id, model=str(best), reason="cracks")
    assert fields_of(excinfo) == ["model"] and "not a complete PyTorch checkpoint" in excinfo.value.problems[0].message
    assert [j.id for j in ops.queue()] == [source.id], "nothing queued"


def test_audit_tampering_in_the_database_is_detected(ops, tiny_dataset):
    a = ops.submit(**tiny_job(tiny_dataset, "a"))
    ops.submit(**tiny_job(tiny_dataset, "b"))
    ops.jump(a.id, reason="honest reason")
    assert ops.audit.verify().ok
    db = sqlite3.connect(ops.store.path)
    db.execute("UPDATE audit SET reason = 'edited reason' WHERE kind = 'jump'")
    db.commit()
    result = ops.audit.verify()
    assert not result.ok and "3" in " ".join(result.problems)
    db.execute("UPDATE audit SET reason = 'honest reason' WHERE kind = 'jump'")
    db.execute("DELETE FROM audit WHERE seq = 2")
    db.commit()
    assert not ops.audit.verify().ok


def test_schedules_validate_persist_and_catch_up_once(tmp_path, tiny_dataset):
    engine = Engine(tmp_path / "home", use_nvml=False, settings={"warm_standby": False})
    template = tiny_job(tiny_dataset, "nightly retrain")
    with pytest.raises(SpecError) as excinfo:
        add_schedule(engine.store, engine.ops, name="nightly", cron="0 25 * * *", template=template)
    assert fields_of(excinfo) == ["cron"]
    with pytest.raises(SpecError) as excinfo:
        add_schedule(engine.store, engine.ops, name="nightly", cron="0 2 * * *",
                     template={**template, "data": "/missing/data.yaml"})
    assert fields_of(excinfo) == ["data"] and engine.store.schedules() == []

    schedule = add_schedule(engine.store, engine.ops, name="nightly", cron="0 2 * * *", template=template,
                            timezone="UTC")
    assert engine.audit.entries()[-1].kind == "schedule"
    engine.store.close()

    # Reopened (a restart): the schedule is there, and a 02:00 missed an hour ago fires once, now.
    engine = Engine(tmp_path / "home", use_nvml=False)
    [stored] = engine.store.schedules()
    assert stored.cron == "0 2 * * *" and stored.template["name"] == "nightly retrain"
    due = next_fire(stored, time.time() - 26 * 3600)
    engine.store.set_schedule_fields(stored.id, last_fired_at=due - 3600 * 24 + 1)  # last fired a day before
    timers = Timers(engine)
    now = next_fire(stored, due - 1) + 3600  # one hour after a due time
    assert timers.catch_up(now) == [schedule.id]
    assert timers.catch_up(now) == []  # coalesced: never twice
    [job] = engine.store.jobs()
    assert job.origin == "schedule" and job.schedule_id == schedule.id and job.name.startswith("nightly retrain (")
    timers.sync_schedules()
    timers.scheduler.start(paused=True)
    assert timers.next_runs()[schedule.id] is not None
    timers.shutdown()
    engine.executor.close()
    engine.store.close()


def test_audit_rows_swapped_in_the_database_are_detected(ops, tiny_dataset):
    a = ops.submit(**tiny_job(tiny_dataset, "a"))
    ops.submit(**tiny_job(tiny_dataset, "b"))
    ops.jump(a.id, reason="first reason")
    db = sqlite3.connect(ops.store.path)
    rows = db.execute("SELECT seq, ts, kind, operator, reason, job_id, details, prev_hash, hash FROM audit "
                      "WHERE seq IN (1, 2) ORDER BY seq").fetchall()
    # Swap the contents of entries 1 and 2, keeping their sequence numbers.
    for seq, row in ((1, rows[1]), (2, rows[0])):
        db.execute("UPDATE audit SET ts=?, kind=?, operator=?, reason=?, job_id=?, details=?, prev_hash=?, hash=? "
                   "WHERE seq=?", (*row[1:], seq))
    db.commit()
    result = ops.audit.verify()
    assert not result.ok and result.problems


def test_preview_shows_a_jump_and_changes_nothing(ops, tiny_dataset):
    a = ops.submit(**tiny_job(tiny_dataset, "a"))
    b = ops.submit(**tiny_job(tiny_dataset, "b"))
    entries = len(ops.audit.entries())
    result = ops.preview(lambda: ops.move(b.id, before=a.id, reason="preview"))
    assert result.kind == "jump" and result.passed == (a.id,) and "expected_victims" in result.details
    assert ids(ops.queue()) == [a.id, b.id] and len(ops.audit.entries()) == entries
    assert ops.audit.verify().ok
    ops.batch(lambda: [ops.move(b.id, before=a.id, reason="two at once"), ops.pause(a.id)])
    assert ids(ops.queue()) == [b.id, a.id] and ops.store.job(a.id).state is JobState.PAUSED
    assert ops.audit.verify().ok


@pytest.mark.parametrize("key, value", [("tick_s", 1e12), ("tick_s", float("nan")), ("stop_grace_s", float("inf")),
                                        ("safety_checkpoint_interval_s", True), ("daily_preemption_cap", -1),
                                        ("reserved_device", "gpu7"), ("warm_standby", "yes")])
def test_settings_that_would_wedge_the_engine_are_refused(ops, key, value):
    with pytest.raises(SpecError) as excinfo:
        ops.change_settings({key: value}, reason="test")
    assert fields_of(excinfo) == [key]
    assert ops.store.settings() == {}
    assert [e.kind for e in ops.audit.entries()] == []


def test_a_worker_that_cannot_be_launched_fails_its_job_and_frees_the_device(tmp_path, tiny_dataset):
    engine = Engine(tmp_path / "home", use_nvml=False, settings={"warm_standby": False})
    try:
        job = engine.ops.submit(**tiny_job(tiny_dataset, "unlaunchable"))
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the run folder's parent should be")
        engine.store.update(job.id, run_dir=str(blocker / "run"))
        engine.start(timers=False)  # dispatch: the launch fails with an OSError inside the executor
        failed = wait_for(lambda: (j := engine.store.job(job.id)).state is JobState.FAILED and j, 30, "the failure")
        assert failed.state is JobState.FAILED and "could not start its worker" in failed.error
        assert failed.device_id is None and engine.store.jobs({JobState.STARTING, JobState.RUNNING}) == []
        assert [n.kind for n in engine.store.notifications()] == ["failed"]
    finally:
        engine.shutdown()


def test_catch_up_runs_the_latest_missed_run_after_a_long_closure(tmp_path, tiny_dataset):
    engine = Engine(tmp_path / "home", use_nvml=False, settings={"warm_standby": False})
    try:
        schedule = add_schedule(engine.store, engine.ops, name="nightly", cron="0 2 * * *",
                                template=tiny_job(tiny_dataset, "nightly"), timezone="UTC")
        # Closed for three days; started an hour after today's 02:00.
        today_2am = next_fire(schedule, time.time() - 86400)
        engine.store.set_schedule_fields(schedule.id, last_fired_at=today_2am - 3 * 86400 + 60)
        assert Timers(engine).catch_up(today_2am + 3600) == [schedule.id]
        assert len(engine.store.jobs()) == 1
    finally:
        engine.shutdown()


def test_a_path_with_an_unknown_home_directory_is_just_not_found(ops):
    # Found by the API fuzz: Path('~someone/x').expanduser() raises when that user does not exist.
    with pytest.raises(SpecError) as excinfo:
        ops.submit(name="x", model="~nobody-by-this-name/m.pt", data="~nobody-by-this-name/d.yaml")
    assert set(fields_of(excinfo)) == {"model", "data"}
