"""Cron-scheduled retrains: what runs when, and the buttons to add or remove one."""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine import timers

COLUMNS = ("ID", "Name", "When (cron)", "Timezone", "Next run", "Last run", "Job")


class SchedulesView(QWidget):
    add_requested = Signal()

    def __init__(self, engine, parent=None) -> None:
        super().__init__(parent)
        self.engine = engine
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.summary = QLabel()
        top.addWidget(self.summary, 1)
        self.add_button = QPushButton("Add schedule…")
        self.add_button.clicked.connect(self.add_requested.emit)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        top.addWidget(self.add_button)
        top.addWidget(self.remove_button)
        layout.addLayout(top)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.table, 1)
        self.refresh()

    def refresh(self) -> None:
        schedules = self.engine.store.schedules()
        now = time.time()
        self.table.setRowCount(len(schedules))
        for row, s in enumerate(schedules):
            upcoming = timers.next_fire(s, now) if s.enabled else None
            t = s.template
            job = (f"{Path(str(t.get('model'))).name} on {Path(str(t.get('data'))).parent.name}/"
                   f"{Path(str(t.get('data'))).name} · {t.get('priority', 'normal')} · owner {t.get('owner', '?')}")
            cells = (str(s.id), s.name, s.cron, s.timezone, _when(upcoming) if s.enabled else "disabled",
                     _when(s.last_fired_at), job)
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.summary.setText(f"{len(schedules)} schedule(s)" if schedules else
                             "No scheduled retrains. “Add schedule…” runs a job at set times (e.g. 02:00 nightly).")
        self.remove_button.setEnabled(bool(schedules))

    def selected_id(self) -> int | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if len(rows) != 1:
            return None
        return int(self.table.item(rows.pop(), 0).text())

    def remove_selected(self, confirm: bool = True) -> None:
        schedule_id = self.selected_id()
        if schedule_id is None:
            return
        if confirm and QMessageBox.question(self, "Remove schedule", f"Remove schedule {schedule_id}?") != QMessageBox.Yes:
            return
        timers.remove_schedule(self.engine.store, self.engine.ops, schedule_id)
        self.refresh()


def _when(ts: float | None) -> str:
    return _dt.datetime.fromtimestamp(ts).strftime("%a %Y-%m-%d %H:%M") if ts else "—"
