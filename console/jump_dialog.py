"""The confirmation before any jump: says exactly what will happen, and will not confirm without a
reason. The operator defaults to the OS user. Nothing has happened yet while it is open; the
window carries the jump out (and the audit entry is written) only on confirm."""
from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QFrame,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QVBoxLayout,
)

from engine.operations import default_operator

from . import theme


@dataclass
class JumpPlan:
    title: str                                   # "Move job 7 to position 1"
    moves: list[str]                             # one line per job that moves ahead of others
    victims: list[dict] = field(default_factory=list)   # expected_victims entries from the preview
    expected_start: str = ""
    confirm_text: str = "Confirm jump"


def victim_line(v: dict) -> str:
    epoch = f"epoch {(v.get('epoch') or 0) + 1}/{v.get('epochs') or '?'}"
    batch = f"batch {v.get('batch') or 0}/{v.get('batches') or '?'}"
    progress = f"{100 * (v.get('progress') or 0):.0f}% done"
    return (f"Job {v['job']} “{v['name']}” ({v['priority']}, owner {v['owner']}) on {v.get('device', '?')} — "
            f"{epoch}, {batch}, {progress}. It finishes its current batch, saves a full checkpoint "
            f"({v.get('checkpoint') or 'weights/resume.pt'}) and resumes automatically at that batch.")


class JumpDialog(QDialog):
    def __init__(self, plan: JumpPlan, parent=None, operator: str | None = None) -> None:
        super().__init__(parent)
        self.plan = plan
        self.setWindowTitle("Confirm jump")
        self.setMinimumWidth(620)
        layout = QVBoxLayout(self)

        title = QLabel(plan.title)
        title.setFont(theme.heading_font(1.3))
        title.setWordWrap(True)
        layout.addWidget(title)

        self.moves_label = QLabel("\n".join(f"•  {m}" for m in plan.moves))
        self.moves_label.setWordWrap(True)
        layout.addWidget(self.moves_label)

        self.victims_label = QLabel()
        self.victims_label.setWordWrap(True)
        if plan.victims:
            text = "<b>Will pause:</b><br>" + "<br>".join(victim_line(v) for v in plan.victims)
            self.victims_label.setText(text)
            self.victims_label.setStyleSheet(f"color: {theme.WARN_AMBER};")
        else:
            self.victims_label.setText("No running job will be paused.")
        layout.addWidget(self.victims_label)

        self.start_label = QLabel(f"<b>Expected start:</b> {plan.expected_start}" if plan.expected_start else "")
        self.start_label.setWordWrap(True)
        layout.addWidget(self.start_label)

        line = QFrame()
        line.setFrameShape(QFrame.HLine)
        layout.addWidget(line)

        form = QFormLayout()
        self.reason_edit = QPlainTextEdit()
        self.reason_edit.setPlaceholderText("Why must this run first? e.g. “line 3 mould crack escapes, ticket 4411”")
        self.reason_edit.setFixedHeight(70)
        self.operator_edit = QLineEdit(operator or default_operator())
        form.addRow("Reason (required)", self.reason_edit)
        form.addRow("Operator", self.operator_edit)
        layout.addLayout(form)
        self.hint = QLabel("The reason and operator go into the audit trail before anything changes.")
        self.hint.setStyleSheet("color: palette(placeholder-text);")
        layout.addWidget(self.hint)

        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.confirm_button = self.buttons.button(QDialogButtonBox.Ok)
        self.confirm_button.setText(plan.confirm_text)
        self.confirm_button.setStyleSheet(f"background: {theme.URGENT_RED}; color: white; font-weight: bold;"
                                          "padding: 6px 14px;")
        self.cancel_button = self.buttons.button(QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

        self.reason_edit.textChanged.connect(self._update)
        self.operator_edit.textChanged.connect(self._update)
        self._update()
        self.reason_edit.setFocus(Qt.OtherFocusReason)

    @property
    def reason(self) -> str:
        return self.reason_edit.toPlainText().strip()

    @property
    def operator(self) -> str:
        return self.operator_edit.text().strip()

    def _update(self) -> None:
        self.confirm_button.setEnabled(bool(self.reason) and bool(self.operator))

    def accept(self) -> None:
        if not self.reason or not self.operator:
            return  # the button is disabled; Enter must not bypass it either
        super().accept()
