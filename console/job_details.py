"""The selected job in full: arguments, run folder, checkpoints, errors, and its event log."""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QFontDatabase
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from engine import protocol
from engine.events import STREAM_END, EventTail

from . import theme

LOG_LINES = 300


class JobDetails(QWidget):
    def __init__(self, engine, parent=None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.job_id: int | None = None
        self.log_end = 0  # bytes of the job's event file already in the log
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.title = QLabel("No job selected")
        self.title.setFont(theme.heading_font(1.1))
        top.addWidget(self.title, 1)
        self.open_button = QPushButton("Open run folder")
        self.open_button.clicked.connect(self.open_run_folder)
        self.open_button.setEnabled(False)
        top.addWidget(self.open_button)
        layout.addLayout(top)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.summary)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.log.setMaximumBlockCount(2000)
        layout.addWidget(self.log, 1)

    def show_job(self, job_id: int | None) -> None:
        self.job_id = job_id
        self.refresh(reload_log=True)

    def refresh(self, reload_log: bool = False) -> None:
        if self.job_id is None:
            self.title.setText("No job selected")
            self.summary.clear()
            self.log.clear()
            self.open_button.setEnabled(False)
            return
        job = self.engine.store.job(self.job_id)
        self.title.setText(f"Job {job.id} · {job.name}")
        self.open_button.setEnabled(Path(job.run_dir).exists())
        args = ", ".join(f"{k}={v}" for k, v in sorted(job.train_args.items())) or "defaults"
        rows = [
            ("State", f"{job.state.value}" + (f" — {job.stop_reason}" if job.stop_reason and job.state.is_active else "")),
            ("Priority / owner", f"{job.priority.label} · {job.owner}"),
            ("Model", job.model),
            ("Dataset", job.data),
            ("Arguments", args),
            ("Run folder", job.run_dir),
            ("Checkpoint", f"{job.checkpoint} (saved {_when(job.last_checkpoint_at)})" if job.checkpoint else "none yet"),
            ("Preemptions", str(job.preemptions)),
        ]
        if job.error:
            rows.append(("Error", f"<span style='color:{theme.URGENT_RED}'>{_html(job.error[:600])}</span>"))
        self.summary.setText("<table cellspacing='3'>" + "".join(
            f"<tr><td><b>{k}</b>&nbsp;&nbsp;</td><td>{v if k == 'Error' else _html(v)}</td></tr>" for k, v in rows)
            + "</table>")
        if reload_log:
            tail = EventTail(Path(job.run_dir) / protocol.EVENTS_FILE)
            events = tail.read_new()
            self.log_end = tail.complete_offset
            self.log.setPlainText("\n".join(format_event(e) for e in events[-LOG_LINES:] if e.get("event") != "batch"))

    def add_event(self, event: dict) -> None:
        if event.get("job_id") != self.job_id or event.get("event") == "batch":
            return
        if event.get(STREAM_END, math.inf) > self.log_end:  # not a live copy of a line read from disk
            self.log.appendPlainText(format_event(event))
            self.refresh()

    def open_run_folder(self) -> None:
        if self.job_id is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(self.engine.store.job(self.job_id).run_dir))


def format_event(event: dict) -> str:
    body = {k: v for k, v in event.items() if k not in ("ts", "event", "job_id", "metrics", "traceback", STREAM_END)}
    return f"{_when(event.get('ts'))}  {event.get('event', '?'):<13} {json.dumps(body, default=str)[:220]}"


def _when(ts: float | None) -> str:
    return _dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "—"


def _html(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
