"""The devices panel, the audit view and the notifications list over a real engine and store
(offscreen Qt, no training: the store's own transitions put a job on a device)."""
import csv
import sqlite3
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from console import theme
from console.audit_view import AuditView
from console.devices_panel import DevicesPanel
from console.notifications_view import NotificationsView
from engine.core import Engine
from engine.jobs import JobEvent, JobState
from engine.operations import victim_details

from engine_runs import tiny_job


@pytest.fixture
def engine(tmp_path):
    eng = Engine(tmp_path / "home", use_nvml=False, cpu_slots=2,
                 settings={"warm_standby": False, "reserved_device": "cpu1"})
    yield eng
    eng.executor.close()
    eng.monitor.close()
    eng.store.close()


def test_devices_panel_shows_slots_reserved_device_and_job(qtbot, engine, tiny_dataset):
    nightly = engine.ops.submit(**tiny_job(tiny_dataset, "nightly experiment", "low"))
    engine.store.transition(nightly.id, JobEvent.DISPATCH, expect=JobState.QUEUED, device_id="cpu0")

    panel = DevicesPanel(engine, interval_ms=60_000)
    qtbot.addWidget(panel)
    panel.resize(300, 700)
    panel.show()

    assert sorted(panel.cards) == ["cpu0", "cpu1"]
    cpu0, cpu1 = panel.cards["cpu0"], panel.cards["cpu1"]
    assert cpu1.reserved and cpu1.reserved_label.isVisible()
    assert not cpu0.reserved and not cpu0.reserved_label.isVisible()
    assert "nightly experiment" in cpu0.job_label.text()
    assert f"job {nightly.id}" in cpu0.job_label.text() and "(low)" in cpu0.job_label.text()
    assert [j.id for j in cpu0.jobs] == [nightly.id]
    assert cpu1.job_label.text() == "free"
    assert panel.summary_label.text() == "1 busy · 1 free"

    before = len(cpu0.util_history)
    panel.refresh()
    panel.refresh()
    assert len(cpu0.util_history) == before + 2
    assert len(cpu1.memory_history) == before + 2
    assert cpu0.memory_label.text().endswith(f"/ {engine.monitor.devices[0].memory_total / 1e9:.1f} GB")
    assert cpu0.util_label.text().endswith("%") and cpu0.memory_percent_label.text().endswith("%")
    assert cpu0.power_label.text() == "—", "CPU slots have no power reading"

    # The job leaves the device: the card says so at the next refresh.
    engine.store.transition(nightly.id, JobEvent.WORKER_FAILED, expect=JobState.STARTING, device_id=None)
    panel.refresh()
    assert cpu0.job_label.text() == "free"
    assert panel.summary_label.text() == "0 busy · 2 free"


def test_audit_view_lists_jumps_filters_exports_and_detects_tampering(qtbot, engine, tiny_dataset, tmp_path):
    first = engine.ops.submit(**tiny_job(tiny_dataset, "nightly experiment", "low"))
    retrain = engine.ops.submit(**tiny_job(tiny_dataset, "line 3 retrain", "low"))
    engine.ops.jump(retrain.id, reason="line 3 mould crack escapes, ticket 4411", operator="dana")

    view = AuditView(engine)
    qtbot.addWidget(view)
    model = view.model
    assert model.rowCount() == 3, "two submissions and one jump"
    newest = model.entry(0)
    assert newest.kind == "jump" and newest.operator == "dana"
    cells = [model.index(0, c).data() for c in range(model.columnCount())]
    assert cells[1] == "JUMP"
    assert cells[2] == "dana"
    assert cells[3] == f"{retrain.id} · line 3 retrain"
    assert cells[4] == "line 3 mould crack escapes, ticket 4411"
    assert f"passed job {first.id}" in cells[5]
    tooltip = model.index(0, 0).data(Qt.ToolTipRole)
    assert "ticket 4411" in tooltip and "expected_victims" in tooltip, "the full entry as a tooltip"
    assert "Audit chain intact · 3 entries verified" in view.verify_label.text()
    assert view.verification.ok

    view.filter_edit.setText("ticket 4411")
    assert model.rowCount() == 1
    view.filter_edit.setText("nobody-typed-this")
    assert model.rowCount() == 0
    view.filter_edit.clear()
    view.kind_combo.setCurrentIndex(view.kind_combo.findData("jumps"))
    assert model.rowCount() == 1
    view.kind_combo.setCurrentIndex(view.kind_combo.findData("other"))
    assert model.rowCount() == 2
    assert view.count_label.text() == "2 of 3"
    view.kind_combo.setCurrentIndex(view.kind_combo.findData("all"))

    out = tmp_path / "audit.csv"
    written = view.export_to(out)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert written == len(rows) == model.rowCount() == 3
    assert rows[-1]["reason"] == "line 3 mould crack escapes, ticket 4411"

    # A later operation shows up without a new view; refresh_if_changed sees it.
    engine.ops.pause(first.id, operator="erin", reason="disk maintenance")
    assert view.refresh_if_changed()
    assert model.rowCount() == 4 and model.entry(0).kind == "pause"
    assert not view.refresh_if_changed(), "nothing changed since"

    # Someone edits an entry behind the trail's back: the banner turns red and names it.
    conn = sqlite3.connect(engine.store.path)
    conn.execute("UPDATE audit SET reason='x' WHERE seq=1")
    conn.commit()
    conn.close()
    view.refresh()
    assert not view.verification.ok
    assert "BROKEN" in view.verify_label.text() and "entry 1" in view.verify_label.text()
    assert theme.URGENT_RED in view.verify_label.styleSheet()
    oldest = model.rowCount() - 1
    assert model.entry(oldest).seq == 1
    assert model.index(oldest, 0).data().startswith("✖"), "the changed entry is marked in the table"
    assert not model.index(0, 0).data().startswith("✖")


def test_audit_view_shows_preemption_victim(qtbot, engine, tiny_dataset):
    victim = engine.ops.submit(**tiny_job(tiny_dataset, "nightly experiment", "low"))
    engine.store.update(victim.id, epoch=40, epochs=50, batch=3, batches=8, progress=0.81)
    victim = engine.store.job(victim.id)

    # The entry the engine writes when it preempts (same shape as Engine._preempt's).
    with engine.store.lock:
        engine.audit.append("preempt", operator="dana", reason="urgent job 9 needs a device", job_id=victim.id,
                            details={"victim": victim_details(victim), "for_job": 9, "for_job_name": "line 3 retrain",
                                     "device": "cpu0"})
    view = AuditView(engine)
    qtbot.addWidget(view)
    view.kind_combo.setCurrentIndex(view.kind_combo.findData("preemptions"))
    assert view.model.rowCount() == 1
    text = view.model.index(0, 5).data()
    assert f"job {victim.id} · nightly experiment" in text
    assert "epoch 41/50" in text and "81%" in text and "for job 9 · line 3 retrain" in text
    assert view.model.index(0, 1).data() == "PREEMPT"
    assert view.model.index(0, 3).data() == f"{victim.id} · nightly experiment"


def test_notifications_newest_first_with_unread_count(qtbot, engine):
    engine.store.notify("alice", 1, "preempted", "Your job 1 (nightly) was paused for urgent job 2.")
    engine.store.notify("bob", 2, "finished", "Your job 2 (line 3 retrain) finished.")
    engine.store.notify("alice", 1, "resumed", "Your job 1 (nightly) resumed at epoch 42, batch 3.")

    view = NotificationsView(tray=False)
    qtbot.addWidget(view)
    assert view.tray is None and not view.show_message(engine.store.notifications()[0])
    assert view.unread == 0
    assert view.load(engine) == 3
    assert [n.kind for n in view.notifications] == ["resumed", "finished", "preempted"]
    assert view.rows[0].message_label.text().startswith("Your job 1 (nightly) resumed")
    assert view.unread == 3
    assert view.unread_label.text() == "3 new"

    with qtbot.waitSignal(view.unreadChanged) as signal:
        view.mark_all_read()
    assert signal.args == [0]
    assert view.unread == 0 and not any(r.unread for r in view.rows)

    engine.store.notify("alice", 1, "finished", "Your job 1 (nightly) finished.")
    live = engine.store.notifications(after_seq=3)[0]
    assert view.add(live)
    assert not view.add(live), "the same notification (seq) is shown once"
    assert view.notifications[0].message == "Your job 1 (nightly) finished."
    assert view.unread == 1

    # Only one owner's notifications.
    view.load(engine, owner="bob")
    assert [n.owner for n in view.notifications] == ["bob"]
    assert view.unread == 0, "bob's one notification was read before (seq below last_read_seq)"
    assert not view.add(live), "alice's notification is not bob's"


def test_a_cluster_pool_gets_its_own_card_with_its_jobs(qtbot, tmp_path, tiny_dataset):
    from engine import paths
    from engine.slurm_executor import SlurmExecutor

    home = paths.cutline_home(tmp_path / "pooled")
    slurm = SlurmExecutor(home, paths.ultralytics_config_dir(home))
    engine = Engine(home, use_nvml=False, pools={"slurm": slurm}, settings={"warm_standby": False})
    try:
        job = engine.ops.submit(**tiny_job(tiny_dataset, "cluster job", "low", device_kind="slurm"))
        panel = DevicesPanel(engine, interval_ms=60_000)
        qtbot.addWidget(panel)
        card = panel.pool_cards["slurm"]
        assert card.counts_label.text() == "0 running · 1 pending"
        assert f"job {job.id} · cluster job (low, queued)" in card.jobs_label.text()
        assert card.status_label.text() == "slurm: not contacted yet"
        assert list(panel.cards) == ["cpu0"]  # local devices keep their own cards
    finally:
        engine.shutdown()


def test_plot_history_and_live_events_overlap_without_repeating_a_batch(tmp_path):
    """The console reads a job's history from its event file while the engine's tail delivers the
    same lines live: each line must be plotted once, and lines after the history still arrive."""
    from console.plots import JobSeries
    from engine.events import EventTail, EventWriter

    writer = EventWriter(tmp_path / "events.jsonl")
    batch = lambda i: writer.emit("batch", epoch=0, batch=i, batches=8, losses={"box_loss": 1.0 / (i + 1)})  # noqa: E731
    engine_tail = EventTail(tmp_path / "events.jsonl")
    writer.emit("training", epochs=1, batches_per_epoch=8, start_epoch=0, start_batch=0)
    for i in range(3):
        batch(i)
    series = JobSeries.from_run(tmp_path)   # the console selects the job: batches 0-2 from disk
    batch(3)
    for event in engine_tail.read_new():    # the engine publishes 0-3 afterwards
        series.add(event)
    batch(4)
    for event in engine_tail.read_new():
        series.add(event)
    writer.close()
    xs, _ = series.losses["box_loss"]
    assert xs == [(i + 1) / 8 for i in range(5)]
    assert series.runs == 1


def test_job_log_shows_each_event_once_when_history_and_live_copies_overlap(qtbot, engine, tiny_dataset):
    from console.job_details import JobDetails
    from engine.events import EventTail, EventWriter

    job = engine.ops.submit(**tiny_job(tiny_dataset, "nightly experiment", "low"))
    events_file = Path(job.run_dir) / "events.jsonl"
    writer = EventWriter(events_file)
    engine_tail = EventTail(events_file)
    writer.emit("started", pid=1)
    writer.emit("checkpoint", path="weights/resume.pt", reason="safety", epoch=0, batch=4)
    details = JobDetails(engine)
    qtbot.addWidget(details)
    details.show_job(job.id)                 # reads both lines from disk
    writer.emit("preempted", checkpoint="weights/resume.pt")
    for event in engine_tail.read_new():     # the engine publishes all three afterwards
        details.add_event({"job_id": job.id, **event})
    writer.close()
    lines = details.log.toPlainText().splitlines()
    assert [line.split()[1] for line in lines] == ["started", "checkpoint", "preempted"]
    assert "stream_end" not in details.log.toPlainText()
