"""The operations console over a real engine: drag to reorder (a drag upwards is a jump that needs
a reason), the submit dialog's field errors, and the emergency retrain button with real training,
live plots, and the same history after closing and reopening."""
from __future__ import annotations

import pytest
from PySide6.QtCore import QModelIndex, QSettings, Qt

from console.emergency_dialog import EmergencyDialog
from console.jump_dialog import JumpDialog
from console.main_window import MainWindow
from console.queue_model import COLUMNS
from console.submit_dialog import SubmitDialog
from engine.core import Engine
from engine.jobs import JobState

from engine_runs import TEST_SETTINGS, tiny_job

ENDED = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


def open_window(qtbot, engine, tmp_path) -> MainWindow:
    window = MainWindow(engine, settings=QSettings(str(tmp_path / "layout.ini"), QSettings.IniFormat))
    window.close_choice = "pause"  # closing never asks in tests
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    return window


@pytest.fixture
def engine(tmp_path):
    eng = Engine(tmp_path / "home", use_nvml=False, settings={**TEST_SETTINGS})
    yield eng
    if eng.state != "stopped":
        eng.shutdown(mode="checkpoint", timeout=60)


def drag(window: MainWindow, job_id: int, onto_row: int) -> None:
    """What the view does on a drop: the dragged rows' mime data, dropped before a row."""
    model = window.model
    data = model.mimeData([model.index(model.row_of(job_id), 0)])
    model.dropMimeData(data, Qt.MoveAction, onto_row, 0, QModelIndex())


def order(window: MainWindow) -> list[int]:
    return [j.id for j in window.engine.ops.queue()]


def test_dragging_up_is_a_jump_confirmed_with_a_reason_and_cancel_changes_nothing(qtbot, engine, tmp_path,
                                                                                  tiny_dataset):
    a, b, c = (engine.ops.submit(**tiny_job(tiny_dataset, name)) for name in ("alpha", "beta", "gamma"))
    window = open_window(qtbot, engine, tmp_path)
    assert [window.model.job_at(r).id for r in range(3)] == [a.id, b.id, c.id]

    drag(window, c.id, 0)  # gamma to the top: ahead of earlier work
    dialog = window.dialog
    assert isinstance(dialog, JumpDialog)
    assert "ahead of job" in dialog.moves_label.text() and "alpha" in dialog.moves_label.text()
    assert not dialog.confirm_button.isEnabled()  # no reason yet
    dialog.reject()
    assert order(window) == [a.id, b.id, c.id]
    assert [e.kind for e in engine.audit.entries()] == ["submit"] * 3

    drag(window, c.id, 0)
    dialog = window.dialog
    dialog.reason_edit.setPlainText("customer audit of line 2 tomorrow")
    assert dialog.confirm_button.isEnabled()
    qtbot.mouseClick(dialog.confirm_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: order(window) == [c.id, a.id, b.id])
    jump = engine.audit.entries()[-1]
    assert (jump.kind, jump.reason, jump.job_id) == ("jump", "customer audit of line 2 tomorrow", str(c.id))
    window.tabs.setCurrentWidget(window.audit_view)
    reasons = [window.audit_view.model.entry(r).reason for r in range(window.audit_view.model.rowCount())]
    assert "customer audit of line 2 tomorrow" in reasons  # visible at once in the audit view
    qtbot.waitUntil(lambda: [window.model.job_at(r).id for r in range(3)] == [c.id, a.id, b.id])

    # Dragging down is a yield: no dialog, recorded.
    drag(window, c.id, 3)
    assert window.dialog is None
    assert order(window) == [a.id, b.id, c.id] and engine.audit.entries()[-1].kind == "yield"

    # Keyboard: Ctrl+Up on beta is a jump too.
    window.select_job(b.id)
    window.move_up_action.trigger()
    assert isinstance(window.dialog, JumpDialog)
    window.dialog.reject()
    assert order(window) == [a.id, b.id, c.id]


def test_submit_dialog_shows_errors_next_to_fields_and_enqueues_nothing(qtbot, engine, tmp_path, tiny_dataset):
    engine.ops.submit(**tiny_job(tiny_dataset, "already queued"))
    window = open_window(qtbot, engine, tmp_path)
    window.open_submit()
    dialog = window.dialog
    assert isinstance(dialog, SubmitDialog)
    dialog.name_edit.setText("retrain")
    dialog.data_edit.setText(str(tmp_path / "missing" / "data.yaml"))
    dialog.model_edit.setText("yolov8n.pt")
    dialog.args_edit.setPlainText("epocs: 3")
    dialog.accept()
    assert dialog.isVisible()
    assert "not found" in dialog.errors["data"].text() and dialog.errors["data"].isVisibleTo(dialog)
    assert "never downloads" in dialog.errors["model"].text()
    assert "did you mean 'epochs'" in dialog.errors["args"].text()
    assert not dialog.errors["name"].isVisibleTo(dialog)
    assert len(engine.store.jobs()) == 1

    dialog.data_edit.setText(str(tiny_dataset))
    dialog.model_edit.setText("yolov8n.yaml")
    dialog.args_edit.setPlainText("lr0: 0.005")
    dialog.priority_combo.setCurrentText("urgent")
    dialog.accept()
    assert "reason" in dialog.errors["reason"].text() and len(engine.store.jobs()) == 1
    dialog.priority_combo.setCurrentText("high")
    dialog.accept()
    assert not dialog.isVisible()
    job = engine.store.jobs()[-1]
    assert (job.name, job.priority.label, job.train_args["lr0"]) == ("retrain", "high", 0.005)
    qtbot.waitUntil(lambda: window.model.row_of(job.id) == 0)


@pytest.mark.slow
def test_emergency_button_pauses_the_running_job_trains_the_urgent_one_and_history_survives_reopening(
    qtbot, engine, tmp_path, tiny_dataset
):
    low = engine.ops.submit(**tiny_job(tiny_dataset, "nightly experiment", "low", owner="bob"))
    engine.start()
    window = open_window(qtbot, engine, tmp_path)
    best = lambda: (engine.store.job(low.id).epoch or 0) >= 1  # noqa: E731  (best.pt exists after epoch 1)
    qtbot.waitUntil(best, timeout=120_000)
    window.select_job(low.id)
    qtbot.waitUntil(lambda: len(window.plots.curve_data("loss", low.id, "box_loss")[0]) >= 8, timeout=30_000)

    window.emergency_action.trigger()
    dialog = window.dialog
    assert isinstance(dialog, EmergencyDialog)
    assert dialog.model_edit.text().endswith(("best.pt", "last.pt")) and dialog.data_edit.text() == low.data
    assert "Will pause" in dialog.impact_label.text() and "nightly experiment" in dialog.impact_label.text()
    assert not dialog.confirm_button.isEnabled()
    dialog.epochs_spin.setValue(2)
    dialog.reason_edit.setPlainText("line 3 mould crack escapes, ticket 4411")
    qtbot.mouseClick(dialog.confirm_button, Qt.LeftButton)
    urgent = dialog.created
    assert urgent is not None and urgent.priority.label == "urgent"

    qtbot.waitUntil(lambda: engine.store.job(low.id).state is JobState.QUEUED, timeout=60_000)
    assert engine.store.job(low.id).checkpoint is not None
    qtbot.waitUntil(lambda: engine.store.job(urgent.id).state is JobState.RUNNING, timeout=60_000)
    assert window.selected_ids() == [urgent.id]  # the console follows the emergency
    qtbot.waitUntil(lambda: len(window.plots.curve_data("loss", urgent.id, "box_loss")[0]) >= 3, timeout=60_000)
    qtbot.waitUntil(lambda: all(engine.store.job(j).state in ENDED for j in (low.id, urgent.id)), timeout=300_000)
    assert engine.store.job(low.id).state is JobState.FINISHED and engine.store.job(low.id).preemptions == 1
    assert engine.store.job(urgent.id).state is JobState.FINISHED
    assert any(e.kind == "emergency" for e in engine.audit.entries())

    window.ended_filter.setChecked(True)
    window.select_job(low.id)
    assert window.selected_ids() == [low.id]
    before = {name: window.plots.curve_data("loss", low.id, name) for name in ("box_loss", "cls_loss")}
    metrics_before = window.plots.curve_data("metrics", low.id, "mAP50-95")
    markers_before = list(window.plots.series[low.id].markers)
    assert [kind for _, kind in markers_before] == ["paused", "resumed"]
    xs = before["box_loss"][0]
    assert len(xs) == 3 * 8 and xs == sorted(xs)  # every batch once: no gap, no repeat
    window.close()
    assert engine.state == "stopped"

    # Reopen on the same home: the same curves, from the event streams.
    again = Engine(tmp_path / "home", use_nvml=False)
    try:
        reopened = open_window(qtbot, again, tmp_path)
        reopened.ended_filter.setChecked(True)
        reopened.select_job(low.id)
        assert {n: reopened.plots.curve_data("loss", low.id, n) for n in before} == before
        assert reopened.plots.curve_data("metrics", low.id, "mAP50-95") == metrics_before
        assert reopened.plots.series[low.id].markers == markers_before
        reopened.close()
    finally:
        if again.state != "stopped":
            again.shutdown()


def test_schedule_dialog_validates_the_cron_line_and_the_schedules_tab_lists_it(qtbot, engine, tmp_path,
                                                                                 tiny_dataset):
    window = open_window(qtbot, engine, tmp_path)
    window.open_schedule()
    dialog = window.dialog
    dialog.name_edit.setText("nightly retrain")
    dialog.data_edit.setText(str(tiny_dataset))
    dialog.cron_edit.setText("0 25 * * *")
    dialog.accept()
    assert dialog.isVisible() and "not a valid crontab line" in dialog.errors["cron"].text()
    assert engine.store.schedules() == []
    dialog.cron_edit.setText("0 2 * * *")
    dialog.accept()
    assert not dialog.isVisible()
    window.tabs.setCurrentWidget(window.schedules_view)
    table = window.schedules_view.table
    assert table.rowCount() == 1 and table.item(0, 1).text() == "nightly retrain"
    assert table.item(0, 4).text() != "—"  # next run shown
    table.selectRow(0)
    window.schedules_view.remove_selected(confirm=False)
    assert engine.store.schedules() == [] and table.rowCount() == 0


@pytest.mark.parametrize("width", [1280, 1920])
def test_queue_columns_fit_the_window_without_sideways_scrolling(qtbot, engine, tmp_path, tiny_dataset, width):
    for n, priority in enumerate(["normal", "low", "high"]):
        engine.ops.submit(**tiny_job(tiny_dataset, f"a rather long job name, number {n}", priority))
    window = open_window(qtbot, engine, tmp_path)
    window.resize(width, 800)
    qtbot.waitUntil(lambda: window.queue_view.viewport().width() > 0)
    view, header = window.queue_view, window.queue_view.horizontalHeader()
    qtbot.waitUntil(lambda: header.length() <= view.viewport().width() + 1, timeout=5_000)
    assert not view.horizontalScrollBar().isVisible()
    shown = [name for i, name in enumerate(COLUMNS) if not header.isSectionHidden(i)]
    assert {"ID", "Job", "Priority", "State", "Progress", "mAP50-95", "Starts", "Why"} <= set(shown)
    assert header.sectionSize(COLUMNS.index("Job")) >= 170
    if width >= 1920:
        assert shown == list(COLUMNS), "a wide window shows every column"
    # The gutter numbers places in the whole queue: high first, then normal, then low.
    places = [window.model.headerData(row, Qt.Vertical) for row in range(window.model.rowCount())]
    names = [window.model.job_at(row).name for row in range(window.model.rowCount())]
    assert places == ["1", "2", "3"] and names[0].endswith("number 2")

    # A column the operator hides stays hidden, and is remembered by the next window.
    view._set_column_shown(COLUMNS.index("Starts"), False)
    window.save_layout()
    again = MainWindow(engine, settings=window.qsettings)  # never shown, so never closed: the engine runs on
    try:
        assert again.queue_view.horizontalHeader().isSectionHidden(COLUMNS.index("Starts"))
        assert not again.queue_view.auto_fit
    finally:
        again.timer.stop()
        again.deleteLater()


def test_screenshot_mode_names_one_file_per_tab():
    from console.app import TABS, screenshot_targets

    assert screenshot_targets("out.png", "audit") == [("audit", "out.png")]
    every = screenshot_targets("/tmp/shots/view.png", "all")
    assert [tab for tab, _ in every] == list(TABS)
    assert every[2] == ("audit", "/tmp/shots/view-audit.png")
