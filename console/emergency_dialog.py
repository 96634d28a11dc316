"""One-click emergency retrain: pre-filled from the selected job (or the last finished one), so the
engineer only adds the reason. Shows what will be paused before anything happens."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QVBoxLayout,
)

from engine.operations import default_operator
from engine.spec import SpecError
from engine.store import JobRecord

from . import theme
from .jump_dialog import victim_line


def trained_weights(job: JobRecord) -> str | None:
    weights = Path(job.run_dir) / "weights"
    for name in ("best.pt", "last.pt"):
        if (weights / name).is_file():
            return str(weights / name)
    return None


class EmergencyDialog(QDialog):
    def __init__(self, engine, source: JobRecord | None, parent=None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.source = source
        self.created: JobRecord | None = None
        self.setWindowTitle("Emergency retrain")
        self.setMinimumWidth(640)
        layout = QVBoxLayout(self)
        title = QLabel("Emergency retrain — runs now, ahead of everything")
        title.setFont(theme.heading_font(1.35))
        title.setStyleSheet(f"color: {theme.URGENT_RED};")
        layout.addWidget(title)
        source_text = (f"From job {source.id} “{source.name}” ({source.state.value})" if source
                       else "No job selected and none finished yet: give a model file and a dataset.")
        self.source_label = QLabel(source_text)
        layout.addWidget(self.source_label)

        form = QFormLayout()
        self.model_edit = QLineEdit((trained_weights(source) if source else None) or "")
        self.data_edit = QLineEdit(source.data if source else "")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 100000)
        self.epochs_spin.setValue(int((source.train_args or {}).get("epochs", 30)) if source else 30)
        self.name_edit = QLineEdit(f"emergency retrain of {source.name}" if source else "emergency retrain")
        self.reason_edit = QPlainTextEdit()
        self.reason_edit.setPlaceholderText("What happened? e.g. “line 3 mould crack escapes, ticket 4411”")
        self.reason_edit.setFixedHeight(70)
        self.operator_edit = QLineEdit(default_operator())
        form.addRow("Start from weights", self.model_edit)
        form.addRow("Dataset", self.data_edit)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Name", self.name_edit)
        form.addRow("Reason (required)", self.reason_edit)
        form.addRow("Operator", self.operator_edit)
        layout.addLayout(form)

        self.impact_label = QLabel()
        self.impact_label.setWordWrap(True)
        layout.addWidget(self.impact_label)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(f"color: {theme.URGENT_RED};")
        layout.addWidget(self.error_label)

        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.confirm_button = buttons.button(QDialogButtonBox.Ok)
        self.confirm_button.setText("Retrain now")
        self.confirm_button.setStyleSheet(f"background: {theme.URGENT_RED}; color: white; font-weight: bold;"
                                          "padding: 6px 14px;")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.reason_edit.textChanged.connect(self._update)
        self.operator_edit.textChanged.connect(self._update)
        self._show_impact()
        self._update()
        self.reason_edit.setFocus(Qt.OtherFocusReason)

    @property
    def reason(self) -> str:
        return self.reason_edit.toPlainText().strip()

    def _kwargs(self, reason: str) -> dict:
        args = {"epochs": self.epochs_spin.value()}
        return dict(reason=reason, operator=self.operator_edit.text().strip(),
                    from_job=self.source.id if self.source else None, model=self.model_edit.text().strip() or None,
                    data=self.data_edit.text().strip() or None, name=self.name_edit.text().strip() or None,
                    train_args=args)

    def _show_impact(self) -> None:
        ops = self.engine.ops
        try:
            victims = ops.preview(lambda: ops.expected_victims(
                ops.emergency(**self._kwargs("preview"), freeze_weights=False).id))
        except (SpecError, ValueError, LookupError) as e:
            self.impact_label.setText("")
            self.error_label.setText(str(e))
            return
        if victims:
            self.impact_label.setText("<b>Will pause:</b><br>" + "<br>".join(victim_line(v) for v in victims)
                                      + "<br><b>Expected start:</b> within seconds, on the freed device.")
            self.impact_label.setStyleSheet(f"color: {theme.WARN_AMBER};")
        else:
            free = len(self.engine.devices) > len([j for j in ops.queue() if j.state.is_active])
            self.impact_label.setText("<b>Expected start:</b> " + ("now, on a free device." if free else
                                      "as soon as a device frees (no running job may be preempted now)."))

    def _update(self) -> None:
        self.confirm_button.setEnabled(bool(self.reason) and bool(self.operator_edit.text().strip()))

    def accept(self) -> None:
        if not self.reason:
            return
        try:
            self.created = self.engine.ops.emergency(**self._kwargs(self.reason))
        except SpecError as e:
            self.error_label.setText("\n".join(str(p) for p in e.problems))
            return
        except (ValueError, LookupError) as e:
            self.error_label.setText(str(e))
            return
        self.engine.wake()
        super().accept()
