"""The audit view: who moved which job ahead of whom, when and why, and whether the record is intact.

Newest entries first. Jumps (jump, emergency, priority raise) and preemptions stand out in colour,
with the jobs they paused or passed in their own column and the full entry as a tooltip. A banner
on top says whether the hash chain verifies. It only reads the trail, always under the store's lock
(the trail shares the store's SQLite connection with the engine thread).
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import re
import time
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSize, Qt, QTimer
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QStyledItemDelegate,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from engine.audit import JUMP_KINDS, AuditEntry, AuditVerification
from engine.store import UnknownJob

from . import theme

log = logging.getLogger("cutline.console")

COLUMNS = ("Time", "Kind", "Operator", "Job", "Reason", "Victims / passed")
TIME_COL, KIND_COL, OPERATOR_COL, JOB_COL, REASON_COL, VICTIMS_COL = range(len(COLUMNS))

#: Kind filter choices: (label, key). "jumps" = JUMP_KINDS, "preemptions" = preempt and requeue, "other" = the rest.
KIND_GROUPS = (("All", "all"), ("Jumps", "jumps"), ("Preemptions", "preemptions"), ("Other", "other"))

KIND_COLOURS = {
    "emergency": theme.URGENT_RED,
    "jump": theme.PRIORITY_COLOURS["high"],
    "priority": theme.PRIORITY_COLOURS["high"],
    "preempt": theme.WARN_AMBER,
    "requeue": theme.WARN_AMBER,
}
KIND_LABELS = {"emergency": "EMERGENCY", "jump": "JUMP", "priority": "PRIORITY ↑", "preempt": "PREEMPT",
               "requeue": "REQUEUE"}
MAX_PASSED_SHOWN = 6
MAX_ROW_LINES = 4       # a long reason wraps this far; the row's tooltip holds all of it
WRAP_ROWS_UP_TO = 500  # beyond this many rows, rows stay one line (fitting each costs)
_ENTRY_REF = re.compile(r"entr(?:y|ies) (\d+)(?:-(\d+))?")


def damaged_seqs(problems: list[str]) -> set[int]:
    """The entries a verification's problems name ("entry 3: ...", "entries 4-6 ...")."""
    out: set[int] = set()
    for problem in problems:
        for first, last in _ENTRY_REF.findall(problem):
            a = int(first)
            b = int(last) if last else a
            out.update(range(a, min(b, a + 10_000) + 1))
    return out


def _readable(colour: str, dark: bool) -> QColor:
    c = QColor(colour)
    return c.lighter(150) if dark and c.lightness() < 150 else c


def local_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def kind_group(kind: str) -> str:
    if kind in JUMP_KINDS:
        return "jumps"
    if kind in ("preempt", "requeue"):  # a requeue by the cluster stopped a job too
        return "preemptions"
    return "other"


def _progress(v: dict) -> str:
    parts = []
    if v.get("epochs"):
        parts.append(f"epoch {(v.get('epoch') or 0) + 1}/{v['epochs']}")
    if v.get("batches") and v.get("batch") is not None:
        parts.append(f"batch {v['batch']}/{v['batches']}")
    if v.get("progress") is not None:
        parts.append(f"{float(v['progress']) * 100:.0f}%")
    return ", ".join(parts)


def _victim(v: Any) -> str:
    if not isinstance(v, dict):
        return str(v)
    text = f"job {v.get('job', '?')}"
    if v.get("name"):
        text += f" · {v['name']}"
    progress = _progress(v)
    if progress:
        text += f" ({progress})"
    return text


def victims_text(entry: AuditEntry) -> str:
    """The jobs an entry paused (or expected to pause) and the ones it passed, in one line."""
    d = entry.details or {}
    parts = []
    if entry.kind in ("preempt", "requeue"):
        victim = d.get("victim")
        text = f"paused {_victim(victim)}" if victim else "paused"
        if d.get("for_job") is not None:
            text += f" for job {d['for_job']}" + (f" · {d['for_job_name']}" if d.get("for_job_name") else "")
        elif d.get("for_jobs"):  # a cluster's preemption: the urgent job(s) it made room for
            first = d["for_jobs"][0]
            text += f" for job {first.get('job')}" + (f" · {first.get('name')}" if first.get("name") else "")
        parts.append(text)
    victims = d.get("expected_victims")
    if victims:
        parts.append("will pause " + ", ".join(_victim(v) for v in victims))
    passed = d.get("passed")
    if passed:
        shown = ", ".join(str(p) for p in passed[:MAX_PASSED_SHOWN])
        more = f" +{len(passed) - MAX_PASSED_SHOWN} more" if len(passed) > MAX_PASSED_SHOWN else ""
        word = "passed" if entry.kind != "yield" else "let pass"
        parts.append(f"{word} job{'s' if len(passed) != 1 else ''} {shown}{more}")
    return " · ".join(parts)


class AuditModel(QAbstractTableModel):
    """Audit entries, newest first, with a text filter and a kind group. `rowCount()` counts the
    entries that pass the filter; `total` counts all of them; `entry(row)` gives one back."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._all: list[AuditEntry] = []
        self._rows: list[AuditEntry] = []
        self._job_names: dict[str, str] = {}
        self._victims: dict[int, str] = {}
        self._search: dict[int, str] = {}
        self.damaged: set[int] = set()  # seqs the last verification named
        self.filter_text = ""
        self.group = "all"

    # ------------------------------------------------------------------ content

    @property
    def total(self) -> int:
        return len(self._all)

    def set_entries(self, entries: list[AuditEntry], job_names: dict[str, str] | None = None,
                    damaged: set[int] | None = None) -> None:
        """Replace the content; `entries` newest first; `damaged`: seqs that fail verification."""
        self.beginResetModel()
        self.damaged = set(damaged or ())
        self._all = list(entries)
        self._job_names = dict(job_names or {})
        self._victims = {e.seq: victims_text(e) for e in self._all}
        self._search = {
            e.seq: " ".join([e.operator, e.reason, e.kind, KIND_LABELS.get(e.kind, ""), str(e.job_id or ""),
                             self.job_text(e)]).lower()
            for e in self._all
        }
        self._rows = [e for e in self._all if self._accepts(e)]
        self.endResetModel()

    def set_filter(self, text: str | None = None, group: str | None = None) -> None:
        if text is not None:
            self.filter_text = text.strip().lower()
        if group is not None:
            if group not in {key for _, key in KIND_GROUPS}:
                raise ValueError(f"unknown kind group {group!r}")
            self.group = group
        self.beginResetModel()
        self._rows = [e for e in self._all if self._accepts(e)]
        self.endResetModel()

    def _accepts(self, entry: AuditEntry) -> bool:
        if self.group != "all" and kind_group(entry.kind) != self.group:
            return False
        if self.filter_text:
            return all(word in self._search[entry.seq] for word in self.filter_text.split())
        return True

    def entry(self, row: int) -> AuditEntry:
        return self._rows[row]

    def job_text(self, entry: AuditEntry) -> str:
        if entry.job_id is None or entry.job_id == "":
            return ""
        d = entry.details or {}
        name = d.get("name")
        if not name and isinstance(d.get("victim"), dict):
            name = d["victim"].get("name")
        name = name or self._job_names.get(str(entry.job_id))
        return f"{entry.job_id} · {name}" if name else str(entry.job_id)

    # ------------------------------------------------------------------ Qt model

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation, role: int = Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        e = self._rows[index.row()]
        col = index.column()
        if role == Qt.DisplayRole:
            if col == TIME_COL:
                return ("✖ " if e.seq in self.damaged else "") + local_time(e.ts)
            if col == KIND_COL:
                return KIND_LABELS.get(e.kind, e.kind)
            if col == OPERATOR_COL:
                return e.operator
            if col == JOB_COL:
                return self.job_text(e)
            if col == REASON_COL:
                return e.reason
            if col == VICTIMS_COL:
                return self._victims.get(e.seq, "")
            return None
        if role == Qt.ToolTipRole:
            warning = ("<p style='color:#dc2626'><b>This entry fails verification: it was changed, moved or "
                       "its neighbours were removed after it was written.</b></p>") if e.seq in self.damaged else ""
            return warning + self.tooltip(e)
        if e.seq in self.damaged:
            if role == Qt.ForegroundRole:
                return _readable(theme.URGENT_RED, theme.is_dark())
            if role == Qt.FontRole:
                font = QFont()
                font.setBold(True)
                font.setStrikeOut(col == REASON_COL)
                return font
        colour = KIND_COLOURS.get(e.kind)
        if role == Qt.ForegroundRole and colour and col in (KIND_COL, VICTIMS_COL):
            return _readable(colour, theme.is_dark())
        if role == Qt.BackgroundRole and colour:
            tint = QColor(colour)
            tint.setAlpha(55 if theme.is_dark() else 30)
            return tint
        if role == Qt.FontRole and colour and col in (KIND_COL, REASON_COL):
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.UserRole:
            return e
        return None

    @staticmethod
    def tooltip(e: AuditEntry) -> str:
        body = json.dumps(e.details, indent=2, sort_keys=True, ensure_ascii=False)
        head = (f"<b>#{e.seq} {html.escape(e.kind)}</b> by {html.escape(e.operator)} at {local_time(e.ts)}"
                f"<br>reason: {html.escape(e.reason)}")
        if e.job_id:
            head += f"<br>job: {html.escape(str(e.job_id))}"
        tail = f"hash {e.hash[:16]}… (previous {e.prev_hash[:16]}…)"
        return f"<div style='white-space:pre-wrap'>{head}</div><pre>{html.escape(body)}</pre><small>{tail}</small>"


class _RowDelegate(QStyledItemDelegate):
    """Rows at least `min_height` tall, with breathing room around wrapped text, and at most
    `max_lines` of text (the whole entry is in the row's tooltip)."""

    def __init__(self, min_height: int, max_lines: int, parent=None) -> None:
        super().__init__(parent)
        self.min_height = min_height
        self.max_height = parent.fontMetrics().lineSpacing() * max_lines + 12

    def sizeHint(self, option, index) -> QSize:
        size = super().sizeHint(option, index)
        return QSize(size.width(), max(min(size.height() + 10, self.max_height), self.min_height))


class AuditView(QWidget):
    """Audit entries with filter, kind choice, CSV export and the chain verification banner.

    Public: `refresh()` (re-read and re-verify), `refresh_if_changed()` (cheap; for frequent engine
    events), `export_to(path) -> int`, `model` (AuditModel), `table`, `filter_edit`, `kind_combo`,
    `export_button`, `verify_label`, `verification` (the last AuditVerification), `count_label`."""

    def __init__(self, engine, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.verification: AuditVerification | None = None
        self._seen: tuple | None = None
        self._names: dict[str, str] = {}

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(6)

        self.verify_label = QLabel()
        self.verify_label.setWordWrap(True)
        self.verify_label.setFont(theme.heading_font(1.05))
        self.verify_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.verify_label)

        bar = QHBoxLayout()
        bar.setSpacing(8)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter: operator, reason, job, kind…")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setMinimumWidth(220)
        self.kind_combo = QComboBox()
        for label, key in KIND_GROUPS:
            self.kind_combo.addItem(label, key)
        self.count_label = QLabel()
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setToolTip("Write every entry, with its hashes, to a CSV file")
        bar.addWidget(self.filter_edit, 1)
        bar.addWidget(self.kind_combo)
        bar.addWidget(self.count_label)
        bar.addWidget(self.export_button)
        layout.addLayout(bar)

        self.model = AuditModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.ElideRight)
        self.table.verticalHeader().hide()
        row_height = self.fontMetrics().height() + 14
        self.table.verticalHeader().setDefaultSectionSize(row_height)
        self.table.setItemDelegate(_RowDelegate(row_height, MAX_ROW_LINES, self.table))
        header = self.table.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QHeaderView.Interactive)
        # The reason and the victims share whatever the window leaves: no sideways scrolling.
        header.setSectionResizeMode(REASON_COL, QHeaderView.Stretch)
        header.setSectionResizeMode(VICTIMS_COL, QHeaderView.Stretch)
        header.setStretchLastSection(False)
        header.setDefaultAlignment(Qt.AlignLeft | Qt.AlignVCenter)
        time_width = self.table.fontMetrics().horizontalAdvance("✖ 2026-12-31 23:59:59") * 1.1 + 16  # bold fits
        for col, width in ((TIME_COL, int(time_width)), (KIND_COL, 120), (OPERATOR_COL, 100), (JOB_COL, 190)):
            self.table.setColumnWidth(col, width)
        layout.addWidget(self.table, 1)
        # Long reasons and victim lists wrap: rows fit their text (re-fitted when a column resizes).
        self._fit_timer = QTimer(self, singleShot=True, interval=50, timeout=self._fit_rows)
        header.sectionResized.connect(lambda *_: self._fit_timer.start())
        header.geometriesChanged.connect(self._fit_timer.start)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.hide()
        layout.addWidget(self.status_label)

        self.filter_edit.textChanged.connect(self._filter_changed)
        self.kind_combo.currentIndexChanged.connect(self._filter_changed)
        self.export_button.clicked.connect(self._export_clicked)
        self.refresh()

    # ------------------------------------------------------------------ reading

    def refresh(self) -> None:
        """Re-read every entry and verify the chain (under the store's lock)."""
        with self.engine.store.lock:
            entries = self.engine.audit.entries()
            verification = self.engine.audit.verify()
            self._seen = self._change_key()
        missing = {str(e.job_id) for e in entries if e.job_id and not (e.details or {}).get("name")
                   and not isinstance((e.details or {}).get("victim"), dict)} - set(self._names)
        for job_id in missing:
            try:
                self._names[job_id] = self.engine.store.job(job_id).name
            except (UnknownJob, ValueError):
                self._names[job_id] = ""
        self.model.set_entries(list(reversed(entries)), self._names, damaged_seqs(verification.problems))
        self._show_verification(verification)
        self._update_count()
        self._fit_rows()

    def refresh_if_changed(self) -> bool:
        """Refresh only if the trail's head or the database changed since the last refresh."""
        with self.engine.store.lock:
            key = self._change_key()
        if key == self._seen:
            return False
        self.refresh()
        return True

    def _change_key(self) -> tuple:
        conn = self.engine.store.conn
        return (self.engine.audit.head(), conn.execute("PRAGMA data_version").fetchone()[0],
                tuple(conn.execute("SELECT COUNT(*), MAX(seq) FROM audit").fetchone()))

    def export_to(self, path) -> int:
        """Write the whole trail as CSV to `path`; returns the number of entries written."""
        with self.engine.store.lock:
            return self.engine.audit.to_csv(path)

    # ------------------------------------------------------------------ showing

    def _show_verification(self, v: AuditVerification) -> None:
        self.verification = v
        if v.ok:
            text = f"✔  Audit chain intact · {v.checked} entries verified"
            colour = theme.OK_GREEN
            self.verify_label.setToolTip(v.summary())
        else:
            shown = "; ".join(v.problems[:3]) + (f"; +{len(v.problems) - 3} more" if len(v.problems) > 3 else "")
            text = f"✖  Audit chain BROKEN · {v.checked} entries checked: {shown}"
            colour = theme.URGENT_RED
            self.verify_label.setToolTip("\n".join(v.problems))
        self.verify_label.setText(text)
        self.verify_label.setStyleSheet(
            f"background: {colour}; color: #ffffff; border-radius: 6px; padding: 8px 12px;")

    def _filter_changed(self, *_: object) -> None:
        self.model.set_filter(self.filter_edit.text(), self.kind_combo.currentData())
        self._update_count()
        self._fit_rows()

    def _fit_rows(self) -> None:
        if self.model.rowCount() <= WRAP_ROWS_UP_TO:
            self.table.resizeRowsToContents()

    def _update_count(self) -> None:
        shown, total = self.model.rowCount(), self.model.total
        self.count_label.setText(f"{total} entries" if shown == total else f"{shown} of {total}")

    def _export_clicked(self) -> None:
        default = f"cutline-audit-{_dt.date.today():%Y%m%d}.csv"
        path, _ = QFileDialog.getSaveFileName(self, "Export audit trail", default, "CSV files (*.csv);;All files (*)")
        if not path:
            return
        try:
            count = self.export_to(path)
        except OSError as e:
            QMessageBox.critical(self, "Export failed", f"Could not write {path}:\n{e}")
            return
        self.status_label.setText(f"Exported {count} entries to {path}")
        self.status_label.show()
