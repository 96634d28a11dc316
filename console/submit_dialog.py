"""Submit a job, or schedule one (cron): a form whose errors appear next to the field they concern.
The engine's own checks decide (engine.operations.check_submission); the dialog only shows them,
and nothing is queued until they all pass."""
from __future__ import annotations

import yaml
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine import timers
from engine.operations import default_operator
from engine.spec import Problem, SpecError

from . import theme

FIELDS = ("name", "data", "model", "epochs", "imgsz", "batch", "device", "priority", "owner", "args", "reason", "cron")


class SubmitDialog(QDialog):
    """`schedule=True` adds a cron line and creates a schedule instead of a job."""

    def __init__(self, engine, parent=None, *, schedule: bool = False, defaults: dict | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.schedule = schedule
        self.result_record = None
        self.setWindowTitle("Schedule a retrain" if schedule else "Submit a training job")
        self.setMinimumWidth(640)
        d = defaults or {}
        layout = QVBoxLayout(self)
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        self.errors: dict[str, QLabel] = {}
        self.inputs: dict[str, QWidget] = {}

        self.name_edit = QLineEdit(d.get("name", ""))
        self.data_edit = QLineEdit(d.get("data", ""))
        self.model_edit = QLineEdit(d.get("model", "yolov8n.yaml"))
        self.epochs_spin = _spin(1, 100000, d.get("epochs", 50))
        self.imgsz_spin = _spin(32, 8192, d.get("imgsz", 640), step=32)
        self.batch_spin = _spin(-1, 4096, d.get("batch", 16))
        self.batch_spin.setSpecialValueText("auto (-1)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["any", "gpu", "cpu", *getattr(engine, "pools", {})])
        self.priority_combo = QComboBox()
        self.priority_combo.addItems(["low", "normal", "high"] if schedule else ["normal", "low", "high", "urgent"])
        self.priority_combo.setCurrentText(d.get("priority", "normal"))
        self.owner_edit = QLineEdit(d.get("owner", default_operator()))
        self.args_edit = QPlainTextEdit(d.get("args", ""))
        self.args_edit.setPlaceholderText("extra Ultralytics arguments, one per line: lr0: 0.005")
        self.args_edit.setFixedHeight(64)
        self.reason_edit = QLineEdit()
        self.reason_edit.setPlaceholderText("required for urgent: it jumps the queue")
        self.cron_edit = QLineEdit(d.get("cron", "0 2 * * *"))
        self.cron_edit.setPlaceholderText("minute hour day month weekday, e.g. 0 2 * * * (02:00 daily)")

        self._row(form, "name", "Name", self.name_edit)
        self._row(form, "data", "Dataset (data.yaml)", _with_browse(self.data_edit, self._browse_data))
        self._row(form, "model", "Model (.pt or .yaml)", _with_browse(self.model_edit, self._browse_model))
        self._row(form, "epochs", "Epochs", self.epochs_spin)
        self._row(form, "imgsz", "Image size", self.imgsz_spin)
        self._row(form, "batch", "Batch", self.batch_spin)
        self._row(form, "device", "Device", self.device_combo)
        self._row(form, "priority", "Priority", self.priority_combo)
        self._row(form, "owner", "Owner", self.owner_edit)
        self._row(form, "args", "Extra arguments", self.args_edit)
        if schedule:
            self._row(form, "cron", "When (cron)", self.cron_edit)
        else:
            self._row(form, "reason", "Reason", self.reason_edit)
        layout.addLayout(form)
        self.general_error = QLabel()
        self.general_error.setWordWrap(True)
        self.general_error.setStyleSheet(f"color: {theme.URGENT_RED};")
        layout.addWidget(self.general_error)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.ok_button = buttons.button(QDialogButtonBox.Ok)
        self.ok_button.setText("Add schedule" if schedule else "Submit")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _row(self, form: QFormLayout, key: str, label: str, widget: QWidget) -> None:
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addWidget(widget)
        error = QLabel()
        error.setWordWrap(True)
        error.setStyleSheet(f"color: {theme.URGENT_RED};")
        error.hide()
        column.addWidget(error)
        self.errors[key] = error
        self.inputs[key] = widget
        form.addRow(label, box)

    def _browse_data(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Dataset", "", "Dataset (*.yaml *.yml)")
        if path:
            self.data_edit.setText(path)

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model", "", "Weights or config (*.pt *.yaml *.yml)")
        if path:
            self.model_edit.setText(path)

    # ------------------------------------------------------------------ values and errors

    def extra_args(self) -> dict:
        text = self.args_edit.toPlainText().strip()
        if not text:
            return {}
        try:
            parsed = yaml.safe_load(text.replace("=", ": ") if ":" not in text else text)
        except yaml.YAMLError as e:
            raise SpecError([Problem("args", f"not 'key: value' lines: {e}")]) from None
        if not isinstance(parsed, dict):
            raise SpecError([Problem("args", "write one 'key: value' per line")])
        return parsed

    def values(self) -> dict:
        extra = self.extra_args()
        train_args = {**extra, "epochs": self.epochs_spin.value(), "imgsz": self.imgsz_spin.value(),
                      "batch": self.batch_spin.value()}
        return {"name": self.name_edit.text(), "model": self.model_edit.text().strip(),
                "data": self.data_edit.text().strip(), "train_args": train_args,
                "priority": self.priority_combo.currentText(), "owner": self.owner_edit.text().strip() or None,
                "device_kind": self.device_combo.currentText()}

    def show_problems(self, problems: list[Problem], extra_keys: set[str]) -> None:
        for label in self.errors.values():
            label.clear()
            label.hide()
        general = []
        for p in problems:
            key = p.field
            if key in extra_keys or key == "train_args":
                key = "args"
            elif key not in self.errors:
                general.append(str(p))
                continue
            label = self.errors[key]
            label.setText((label.text() + "\n" if label.text() else "") + p.message)
            label.show()
        self.general_error.setText("\n".join(general))

    def accept(self) -> None:
        try:
            values = self.values()
            extra_keys = set(self.extra_args())
        except SpecError as e:
            self.show_problems(e.problems, set())
            return
        try:
            if self.schedule:
                template = {k: v for k, v in values.items() if v is not None}
                self.result_record = timers.add_schedule(self.engine.store, self.engine.ops, name=values["name"],
                                                         cron=self.cron_edit.text(), template=template)
            else:
                self.result_record = self.engine.ops.submit(**values, reason=self.reason_edit.text())
        except SpecError as e:
            self.show_problems(e.problems, extra_keys)
            return
        self.engine.wake()
        super().accept()


def _spin(low: int, high: int, value: int, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(int(value))
    return spin


def _with_browse(edit: QLineEdit, browse) -> QWidget:
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit, 1)
    button = QPushButton("Browse…")
    button.clicked.connect(browse)
    row.addWidget(button)
    return box
