"""The queue table: rows in dispatch order, drag to reorder, a progress bar under epoch/batch.

Columns fit the window until the operator resizes one by hand (then their widths are kept and
remembered): the short columns take what their text needs, the job name and the "why it waits"
text share the rest, so a 1280-pixel screen shows every column without scrolling. A right click on
the header hides or shows columns.
"""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QMenu, QStyledItemDelegate, QTableView

from . import theme
from .queue_model import COL, COLUMNS, PROGRESS_ROLE, QueueModel

# The widest text each short column usually holds (bold where the model makes it bold).
COLUMN_SAMPLES = {"ID": "999", "Owner": "operator", "Priority": "URGENT", "State": "stepping aside",
                  "Progress": "ep 30/30 · b 16/16", "mAP50-95": "0.000", "Device": "cuda:0", "Waiting": "59 min",
                  "Starts": "~59 min"}
BOLD_COLUMNS = {"Priority", "State"}
JOB_WIDTH = (170, 400)   # the job name's column: at least, at most (the rest goes to "Why")
WHY_MIN_WIDTH = 150
CELL_PADDING = 16        # the style's margins and a little air
# Where even that does not fit, these step aside first (their facts stay in the row's tooltip,
# the devices column and the details tab); the header's menu brings any of them back.
NARROW_HIDE_ORDER = ("Waiting", "Device", "Owner")


class ProgressDelegate(QStyledItemDelegate):
    """A slim progress bar under the epoch/batch text, coloured by the job's state."""

    def paint(self, painter: QPainter, option, index) -> None:
        value = index.data(PROGRESS_ROLE)
        text = index.data(Qt.DisplayRole) or ""
        super().paint(painter, option, index)  # background, selection and the text itself
        if value is None or not text:
            return
        state = index.sibling(index.row(), COL["State"]).data(Qt.DisplayRole) or ""
        paused = "paus" in state or "step" in state or state == "resumable"
        key = "running" if state == "running" else ("paused" if paused else "queued")
        rect = option.rect.adjusted(6, option.rect.height() - 8, -6, -3)
        painter.save()
        painter.setRenderHint(QPainter.Antialiasing)
        painter.setPen(Qt.NoPen)
        painter.setBrush(QColor(option.palette.color(QPalette.Mid)))
        painter.drawRoundedRect(rect, 2.5, 2.5)
        filled = rect.adjusted(0, 0, -int(rect.width() * (1 - max(0.0, min(1.0, float(value))))), 0)
        painter.setBrush(theme.state_colour(key))
        painter.drawRoundedRect(filled, 2.5, 2.5)
        painter.restore()


class QueueView(QTableView):
    """Public: `auto_fit` (True until the operator sizes a column), `fit_columns()`, `natural_widths()`."""

    def __init__(self, model: QueueModel, parent=None) -> None:
        super().__init__(parent)
        self.setModel(model)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.setDragEnabled(True)
        self.setAcceptDrops(True)
        self.setDropIndicatorShown(True)
        self.setDragDropMode(QAbstractItemView.InternalMove)
        self.setDefaultDropAction(Qt.MoveAction)
        self.setDragDropOverwriteMode(False)
        self.setAlternatingRowColors(True)
        self.setShowGrid(False)
        self.setWordWrap(False)
        gutter = self.verticalHeader()  # shows each job's place in the queue
        gutter.setDefaultSectionSize(34)
        gutter.setSectionResizeMode(QHeaderView.Fixed)
        gutter.setDefaultAlignment(Qt.AlignCenter)
        gutter.setMinimumWidth(QFontMetrics(self.font()).horizontalAdvance("999") + 14)
        self.setItemDelegateForColumn(COL["Progress"], ProgressDelegate(self))
        self.setContextMenuPolicy(Qt.CustomContextMenu)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.Interactive)
        header.setStretchLastSection(True)
        header.setMinimumSectionSize(28)
        header.setContextMenuPolicy(Qt.CustomContextMenu)
        header.customContextMenuRequested.connect(self._header_menu)
        header.sectionResized.connect(self._section_resized)
        self.auto_fit = True
        self._fitting = False
        self.fit_columns()

    def natural_widths(self) -> dict[str, int]:
        """What each short column needs for its header and its usual widest text."""
        plain = QFontMetrics(self.font())
        bold_font = QFont(self.font())
        bold_font.setBold(True)
        bold = QFontMetrics(bold_font)
        header = QFontMetrics(self.horizontalHeader().font())
        widths = {}
        for name, sample in COLUMN_SAMPLES.items():
            text = (bold if name in BOLD_COLUMNS else plain).horizontalAdvance(sample)
            widths[name] = max(text, bold.horizontalAdvance(name), header.horizontalAdvance(name)) + CELL_PADDING
        return widths

    def fit_columns(self) -> None:
        """Short columns at their natural width; "Job" and "Why" share what is left of the viewport.
        Too narrow for all of them, the columns of NARROW_HIDE_ORDER step aside."""
        if not self.auto_fit:
            return
        header = self.horizontalHeader()
        widths = self.natural_widths()
        room = self.viewport().width()
        low, high = JOB_WIDTH
        shown = [name for name in widths if name not in NARROW_HIDE_ORDER]
        for name in reversed(NARROW_HIDE_ORDER):  # the last to step aside is the first back
            if sum(widths[n] for n in shown) + widths[name] + low + WHY_MIN_WIDTH > room:
                break
            shown.append(name)
        spare = room - sum(widths[n] for n in shown)
        widths["Job"] = max(low, min(high, spare // 2))
        self._fitting = True
        try:
            for name in NARROW_HIDE_ORDER:
                header.setSectionHidden(COL[name], name not in shown)
            for name, width in widths.items():
                self.setColumnWidth(COL[name], width)
        finally:
            self._fitting = False

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.fit_columns()

    def _section_resized(self, index: int, old: int, new: int) -> None:
        # The last column stretches by itself; any other change not made by fit_columns is the operator's.
        if not self._fitting and index != len(COLUMNS) - 1 and self.isVisible() and old > 0:
            self.auto_fit = False

    def _header_menu(self, pos) -> None:
        header = self.horizontalHeader()
        menu = QMenu(self)
        for index, name in enumerate(COLUMNS):
            if name in ("Job",):
                continue  # the one column a row cannot do without
            action = menu.addAction(name)
            action.setCheckable(True)
            action.setChecked(not header.isSectionHidden(index))
            action.toggled.connect(lambda shown, i=index: self._set_column_shown(i, shown))
        menu.addSeparator()
        menu.addAction("Fit columns to the window (default)", self._refit)
        menu.popup(header.mapToGlobal(pos))

    def _set_column_shown(self, index: int, shown: bool) -> None:
        self.auto_fit = False  # the operator's choice of columns now stands, and is remembered
        self.horizontalHeader().setSectionHidden(index, not shown)

    def _refit(self) -> None:
        self.auto_fit = True
        for index in range(len(COLUMNS)):
            self.horizontalHeader().setSectionHidden(index, False)
        self.fit_columns()


__all__ = ["QueueView", "ProgressDelegate", "COLUMN_SAMPLES"]
