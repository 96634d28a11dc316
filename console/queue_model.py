"""The queue as a Qt table model: every job not yet ended, in queue order, then (optionally) the
ended ones. The model owns nothing: `refresh()` re-reads the store, and a drop only *asks* for a
move (signal `move_requested`); the window decides whether it is a jump that needs confirming."""
from __future__ import annotations

import time
from dataclasses import dataclass

from PySide6.QtCore import QAbstractTableModel, QMimeData, QModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QFont

from engine.estimates import estimated_waits
from engine.jobs import JobState
from engine.operations import queue_key
from engine.store import JobRecord

from . import theme

MIME = "application/x-cutline-job-ids"
COLUMNS = ("ID", "Job", "Owner", "Priority", "State", "Progress", "mAP50-95", "Device", "Waiting", "Starts", "Why")
COL = {name: i for i, name in enumerate(COLUMNS)}
PROGRESS_ROLE = Qt.UserRole + 1
JOB_ID_ROLE = Qt.UserRole + 2


@dataclass
class Filters:
    states: frozenset[str] = frozenset()   # empty = all not ended
    owner: str = ""                        # substring, case-insensitive
    show_ended: bool = True                # the most recent ended jobs, below the queue
    ended_limit: int = 50


class QueueModel(QAbstractTableModel):
    move_requested = Signal(list, object)   # job ids in order, id to put them before (None = end)

    def __init__(self, engine, parent=None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.jobs: list[JobRecord] = []
        self.filters = Filters()
        self.waiting: dict[int, str] = {}
        self.waits: dict[int, float | None] = {}
        self.seconds_per_batch: dict[int, float] = {}
        self.places: dict[int, int] = {}       # job id -> place in the whole queue (1 = next)
        self._last_batch: dict[int, float] = {}

    # ------------------------------------------------------------------ data

    def refresh(self) -> None:
        ops = self.engine.ops
        queue = ops.queue()
        ended = []
        if self.filters.show_ended:
            ended = sorted(self.engine.store.jobs({JobState.FINISHED, JobState.FAILED, JobState.CANCELLED}),
                           key=lambda j: -(j.ended_at or 0))[: self.filters.ended_limit]
        try:
            self.waiting = self.engine.why_waiting()
        except Exception:  # a broken snapshot must not blank the queue
            self.waiting = {}
        self.waits = estimated_waits(queue, len(self.engine.devices), self.seconds_per_batch)
        self.places = {job.id: place for place, job in enumerate(queue, start=1)}  # filters never renumber
        rows = [j for j in queue + ended if self._visible(j)]
        if [j.id for j in rows] == [j.id for j in self.jobs]:
            self.jobs = rows
            if rows:
                self.dataChanged.emit(self.index(0, 0), self.index(len(rows) - 1, len(COLUMNS) - 1))
                self.headerDataChanged.emit(Qt.Vertical, 0, len(rows) - 1)
            return
        self.beginResetModel()
        self.jobs = rows
        self.endResetModel()

    def note_batch(self, job_id: int, ts: float) -> None:
        """Live batch events give each job's pace, for the start estimates."""
        last = self._last_batch.get(job_id)
        self._last_batch[job_id] = ts
        if last is not None and 0 < ts - last < 600:
            old = self.seconds_per_batch.get(job_id)
            self.seconds_per_batch[job_id] = ts - last if old is None else 0.8 * old + 0.2 * (ts - last)

    def _visible(self, job: JobRecord) -> bool:
        f = self.filters
        if f.states and job.state.value not in f.states:
            return False
        if f.owner and f.owner.lower() not in job.owner.lower():
            return False
        return True

    def job_at(self, row: int) -> JobRecord | None:
        return self.jobs[row] if 0 <= row < len(self.jobs) else None

    def row_of(self, job_id: int) -> int | None:
        return next((i for i, j in enumerate(self.jobs) if j.id == job_id), None)

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.jobs)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return COLUMNS[section]
        if orientation == Qt.Vertical and role == Qt.DisplayRole:  # the gutter: place in the queue
            job = self.job_at(section)
            place = self.places.get(job.id) if job is not None else None
            return "" if place is None else str(place)
        if orientation == Qt.Vertical and role == Qt.ToolTipRole:
            return "place in the queue (the order jobs get a device)"
        return None

    def data(self, index: QModelIndex, role=Qt.DisplayRole):
        job = self.job_at(index.row())
        if job is None:
            return None
        col = index.column()
        if role == JOB_ID_ROLE:
            return job.id
        if role == Qt.DisplayRole:
            return self._text(job, col)
        if role == PROGRESS_ROLE:
            return job.progress
        if role == Qt.ForegroundRole:
            if col == COL["State"]:
                return QBrush(theme.state_colour(job.state.value))
            if col == COL["Priority"]:
                return QBrush(theme.priority_colour(job.priority.label))
        if role == Qt.FontRole and col in (COL["State"], COL["Priority"], COL["Job"]):
            font = QFont()
            font.setBold(col != COL["Job"] or job.priority.label == "urgent")
            return font
        if role == Qt.ToolTipRole:
            return self._tooltip(job)
        if role == Qt.TextAlignmentRole and col in (COL["ID"], COL["mAP50-95"]):
            return int(Qt.AlignRight | Qt.AlignVCenter)
        return None

    def _text(self, job: JobRecord, col: int) -> str:
        name = COLUMNS[col]
        if name == "ID":
            return str(job.id)
        if name == "Job":
            return job.name
        if name == "Owner":
            return job.owner
        if name == "Priority":
            return job.priority.label.upper() if job.priority.label == "urgent" else job.priority.label
        if name == "State":
            if job.state is JobState.PREEMPTING:
                target = {"queued": "stepping aside", "paused": "pausing", "cancelled": "cancelling"}
                return target.get(job.stop_target or "queued", "stopping")
            if job.state is JobState.QUEUED and job.checkpoint and job.preemptions:
                return "resumable"  # queued, with a checkpoint to resume from
            return job.state.value
        if name == "Progress":
            if job.epochs:
                return f"ep {min((job.epoch or 0) + 1, job.epochs)}/{job.epochs} · b {job.batch or 0}/{job.batches or '?'}"
            return ""
        if name == "mAP50-95":
            value = (job.metrics or {}).get("mAP50-95")
            return "" if value is None else f"{value:.3f}"
        if name == "Device":
            return job.device_id or "" if job.state.is_active else ""
        if name == "Waiting":
            if job.state is JobState.QUEUED:
                return _duration(time.time() - job.waiting_since)
            return ""
        if name == "Starts":  # the estimated start
            if job.state is not JobState.QUEUED:
                return "now" if job.state is JobState.STARTING else ""
            wait = self.waits.get(job.id)
            if wait is None:
                return "—"
            return "next" if wait < 5 else f"~{_duration(wait)}"
        if name == "Why":
            if job.state is JobState.QUEUED:
                return self.waiting.get(job.id, "").removeprefix("waiting: ")
            if job.state is JobState.PREEMPTING:
                return job.stop_reason or ""
            if job.state is JobState.PAUSED:
                return job.stop_reason or "paused by an operator"
            if job.state is JobState.FAILED:
                return (job.error or "").splitlines()[0][:160] if job.error else ""
            return ""
        return ""

    def _tooltip(self, job: JobRecord) -> str:
        lines = [f"job {job.id}: {job.name} ({job.priority.label}, {job.state.value})", f"owner {job.owner}"]
        if job.state is JobState.QUEUED and job.id in self.waiting:
            lines.append(self.waiting[job.id])
        if job.stop_reason:
            lines.append(job.stop_reason)
        if job.state is JobState.QUEUED:
            lines.append(f"waiting {_duration(time.time() - job.waiting_since)}")
        if job.preemptions:
            lines.append(f"preempted {job.preemptions}×; resumes from {job.checkpoint}")
        if job.error:
            lines.append(f"error: {job.error[:300]}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ drag and drop

    def flags(self, index: QModelIndex):
        base = super().flags(index)
        if not index.isValid():
            return base | Qt.ItemIsDropEnabled
        job = self.job_at(index.row())
        if job is not None and not job.state.is_terminal:
            return base | Qt.ItemIsDragEnabled | Qt.ItemIsDropEnabled
        return base

    def supportedDropActions(self):
        return Qt.MoveAction

    def supportedDragActions(self):
        return Qt.MoveAction

    def mimeTypes(self):
        return [MIME]

    def mimeData(self, indexes):
        rows = sorted({i.row() for i in indexes})
        ids = [str(self.jobs[r].id) for r in rows if not self.jobs[r].state.is_terminal]
        data = QMimeData()
        data.setData(MIME, ",".join(ids).encode())
        return data

    def dropMimeData(self, data, action, row, column, parent) -> bool:
        if action != Qt.MoveAction or not data.hasFormat(MIME):
            return False
        ids = [int(x) for x in bytes(data.data(MIME)).decode().split(",") if x]
        if row < 0:
            row = parent.row() if parent.isValid() else len(self.jobs)
        before = self._first_not_moved_from(row, ids)
        self.move_requested.emit(ids, before)
        return False  # the view must not remove rows itself: the store decides, refresh() shows it

    def _first_not_moved_from(self, row: int, ids: list[int]) -> int | None:
        for job in self.jobs[row:]:
            if job.id not in ids and not job.state.is_terminal:
                return job.id
        return None


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


__all__ = ["QueueModel", "COLUMNS", "COL", "MIME", "PROGRESS_ROLE", "JOB_ID_ROLE", "queue_key"]
