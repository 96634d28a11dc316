"""The first Cutline window: one demo training job on the generated dataset, live.

It shows what the foundation can already do — real Ultralytics training in a worker process,
live loss and mAP curves from its event stream, and a pause that saves the full training state
within one batch and resumes at the exact batch. The queue, jumps and audit views build on the
scheduler engine and replace this single-job view.
"""
from __future__ import annotations

import time
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QFont, QKeySequence
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QSplitter,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from engine.devices import DeviceMonitor
from engine.events import read_events
from engine.protocol import EVENTS_FILE, EXIT_PREEMPTED, describe_exit
from engine.runner import WorkerProcess
from engine.spec import JobSpec

STATE_COLOURS = {
    "Ready": "#6b7280",
    "Starting": "#2563eb",
    "Running": "#16a34a",
    "Pausing": "#d97706",
    "Paused": "#d97706",
    "Finished": "#0f766e",
    "Failed": "#dc2626",
}
LOSS_COLOURS = {"box_loss": "#2563eb", "cls_loss": "#db2777", "dfl_loss": "#65a30d"}
METRIC_COLOURS = {"precision": "#7c3aed", "recall": "#0891b2", "mAP50": "#ea580c", "mAP50-95": "#16a34a"}


class PreviewWindow(QMainWindow):
    def __init__(self, spec: JobSpec, job_name: str, devices: DeviceMonitor):
        super().__init__()
        self.spec = spec
        self.job_name = job_name
        self.devices = devices
        self.worker = WorkerProcess(spec)
        self.batches_per_epoch = 1
        self.loss_points: dict[str, tuple[list, list]] = {k: ([], []) for k in LOSS_COLOURS}
        self.metric_points: dict[str, tuple[list, list]] = {k: ([], []) for k in METRIC_COLOURS}
        self.state = "Ready"
        self.setWindowTitle("Cutline — YOLO training console")
        self.resize(1280, 800)
        self._build()
        self._load_history()
        self.timer = QTimer(self, interval=250, timeout=self._poll)
        self.timer.start()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        toolbar = self.addToolBar("Job")
        toolbar.setMovable(False)
        toolbar.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        icon = self.style().standardIcon
        self.start_action = QAction(icon(QStyle.SP_MediaPlay), "Start / Resume", self,
                                    shortcut=QKeySequence("Ctrl+R"), triggered=self.start)
        self.pause_action = QAction(icon(QStyle.SP_MediaPause), "Pause (save state)", self,
                                    shortcut=QKeySequence("Ctrl+P"), triggered=self.pause)
        self.checkpoint_action = QAction(icon(QStyle.SP_DialogSaveButton), "Safety checkpoint", self,
                                         triggered=self.worker.request_checkpoint)
        for action in (self.start_action, self.pause_action, self.checkpoint_action):
            toolbar.addAction(action)

        card = QFrame(objectName="card")
        grid = QGridLayout(card)
        title = QLabel(self.job_name)
        title.setFont(_font(15, bold=True))
        self.state_label = QLabel()
        self.state_label.setFont(_font(22, bold=True))
        self.progress = QProgressBar(textVisible=True)
        self.progress.setMinimumHeight(26)
        self.detail = QLabel(wordWrap=True)
        self.detail.setFont(_font(11))
        self.detail.setTextInteractionFlags(Qt.TextSelectableByMouse)
        grid.addWidget(title, 0, 0)
        grid.addWidget(self.state_label, 1, 0)
        grid.addWidget(self.progress, 2, 0)
        grid.addWidget(self.detail, 3, 0)
        grid.setRowStretch(4, 1)

        pg.setConfigOptions(antialias=True, background="w", foreground="#111827")
        self.loss_plot = pg.PlotWidget(title="Training loss per batch")
        self.loss_plot.addLegend(offset=(-10, 10))
        self.loss_plot.setLabel("bottom", "batch")
        self.loss_curves = {k: self.loss_plot.plot(name=k, pen=pg.mkPen(c, width=2)) for k, c in LOSS_COLOURS.items()}
        self.metric_plot = pg.PlotWidget(title="Validation per epoch")
        self.metric_plot.addLegend(offset=(10, 10))
        self.metric_plot.setLabel("bottom", "epoch")
        self.metric_plot.setYRange(0, 1)
        self.metric_curves = {
            k: self.metric_plot.plot(name=k, pen=pg.mkPen(c, width=2), symbol="o", symbolSize=6, symbolBrush=c)
            for k, c in METRIC_COLOURS.items()
        }
        plots = QSplitter(Qt.Vertical)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.metric_plot)

        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(500)
        self.log.setFont(QFont("DejaVu Sans Mono", 9))

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(card)
        left_layout.addWidget(QLabel("Events"))
        left_layout.addWidget(self.log, 1)
        splitter = QSplitter(Qt.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(plots)
        splitter.setSizes([420, 860])
        self.setCentralWidget(splitter)
        self.setStyleSheet(
            "QFrame#card { background: #f8fafc; border: 1px solid #e2e8f0; border-radius: 8px; }"
            "QToolBar { spacing: 8px; padding: 4px; } QToolButton { padding: 6px 10px; font-size: 13px; }"
        )
        self.statusBar().showMessage(f"{self.devices.backend_note}   ·   run folder: {self.spec.run_dir}")
        self._set_state("Paused" if self.worker.has_checkpoint() else "Ready")

    # ------------------------------------------------------------------ commands

    def start(self) -> None:
        if self.worker.running or self.state == "Finished":
            return
        self.worker.start()
        self._set_state("Starting")

    def pause(self) -> None:
        if self.worker.running:
            self.worker.preempt()
            self._set_state("Pausing")

    # ------------------------------------------------------------------ events

    def _load_history(self) -> None:
        events = read_events(Path(self.spec.run_dir) / EVENTS_FILE)
        for event in events:
            self._apply(event, live=False)
        self.worker.tail.read_new()  # already shown; follow only what comes next
        self._redraw()
        if events and events[-1]["event"] == "finished":
            self._set_state("Finished")

    def _poll(self) -> None:
        new = self.worker.new_events()
        for event in new:
            self._apply(event, live=True)
        if new:
            self._redraw()
        code = self.worker.returncode()
        if code is not None and self.state in ("Starting", "Running", "Pausing"):
            if code == 0:
                self._set_state("Finished")
            elif code == EXIT_PREEMPTED or self.worker.stop_requested:
                self._set_state("Paused")
            else:
                self._set_state("Failed")
                self._log(f"worker {describe_exit(code)}")

    def _apply(self, event: dict, live: bool) -> None:
        kind = event["event"]
        if kind == "training":
            self.batches_per_epoch = max(1, event["batches_per_epoch"])
            self.progress.setMaximum(event["epochs"] * self.batches_per_epoch)
            if live:
                self._set_state("Running")
        elif kind == "batch":
            x = event["epoch"] * self.batches_per_epoch + event["batch"] + 1
            for name, value in event["losses"].items():
                if name in self.loss_points:
                    xs, ys = self.loss_points[name]
                    xs.append(x)
                    ys.append(value)
            self.progress.setValue(x)
            self.progress.setFormat(f"epoch {event['epoch'] + 1} · batch {event['batch'] + 1}/{event['batches']}")
            return  # too frequent for the log
        elif kind == "epoch":
            for name in METRIC_COLOURS:
                xs, ys = self.metric_points[name]
                xs.append(event["epoch"] + 1)
                ys.append(event[name] or 0.0)
            self.detail.setText(f"Latest mAP50-95 {event['mAP50-95']:.3f} · mAP50 {event['mAP50']:.3f} (epoch {event['epoch'] + 1})")
        elif kind == "checkpoint":
            x = event["epoch"] * self.batches_per_epoch + event["batch"]
            if event["reason"] == "preempt":
                line = pg.InfiniteLine(x, angle=90, pen=pg.mkPen("#d97706", width=1.5, style=Qt.DashLine),
                                       label="paused", labelOpts={"position": 0.9, "color": "#d97706"})
                self.loss_plot.addItem(line)
            self.detail.setText(
                f"Checkpoint at epoch {event['epoch'] + 1}, batch {event['batch']}: "
                f"{event['bytes'] / 1e6:.0f} MB written in {event['seconds']:.2f} s"
            )
        elif kind == "failed":
            self.detail.setText(f"Failed: {event['error']}")
        self._log(_describe(event), event.get("ts"))

    def _redraw(self) -> None:
        for name, curve in self.loss_curves.items():
            curve.setData(*self.loss_points[name])
        for name, curve in self.metric_curves.items():
            curve.setData(*self.metric_points[name])

    def _set_state(self, state: str) -> None:
        self.state = state
        self.state_label.setText(state)
        self.state_label.setStyleSheet(f"color: {STATE_COLOURS[state]};")
        running = state in ("Starting", "Running")
        self.start_action.setEnabled(state in ("Ready", "Paused", "Failed"))
        self.pause_action.setEnabled(running)
        self.checkpoint_action.setEnabled(state == "Running")

    def _log(self, text: str, ts: float | None = None) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S', time.localtime(ts))}  {text}")

    # ------------------------------------------------------------------ closing

    def closeEvent(self, event) -> None:
        if self.worker.running and not getattr(self, "quiet_close", False):
            answer = QMessageBox.question(
                self, "Training is running",
                "Pause the job safely (its state is saved and it resumes at the same batch next time) and quit?",
                QMessageBox.Yes | QMessageBox.Cancel,
            )
            if answer != QMessageBox.Yes:
                event.ignore()
                return
        self.shutdown()
        event.accept()

    def shutdown(self) -> None:
        if self.worker.running:
            self.worker.preempt()
            try:
                self.worker.wait(timeout=60)
            except Exception:
                self.worker.kill()
        self.devices.close()


def _describe(event: dict) -> str:
    kind = event["event"]
    if kind == "started":
        how = f"resumed at epoch {event['resume_epoch'] + 1}, batch {event['resume_batch']}" if event.get("resumed") else "started"
        return f"worker {how} on {event['device']} (ready in {event['setup_seconds']:.1f} s)"
    if kind == "training":
        return f"training {event['images']} images, {event['epochs']} epochs of {event['batches_per_epoch']} batches"
    if kind == "epoch":
        return f"epoch {event['epoch'] + 1}: mAP50 {event['mAP50']:.3f}, mAP50-95 {event['mAP50-95']:.3f}"
    if kind == "checkpoint":
        return f"{event['reason']} checkpoint at epoch {event['epoch'] + 1} batch {event['batch']} ({event['seconds']:.2f} s)"
    if kind == "preempted":
        return "paused: state saved, resumes at the next batch"
    if kind == "finished":
        return f"finished after {event['epochs']} epochs"
    if kind == "failed":
        return f"failed: {event['error']}"
    return kind


def _font(points: int, bold: bool = False) -> QFont:
    font = QFont()
    font.setPointSize(points)
    font.setBold(bold)
    return font
