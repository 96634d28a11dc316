"""Notifications for job owners: preempted (amber), resumed (blue), finished (green), failed (red).

An in-app list, newest first, with an unread counter, plus a desktop tray message where the
desktop has a system tray (offscreen and many kiosk sessions have none: then the list alone).
History comes from the store (`load`), live ones from the engine's "notification" events (`add`).
It only shows; reading state lives here (which seq was last read), jobs stay in the engine.
"""
from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QStyle,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from engine.store import Notification

from . import theme

KIND_COLOURS = {
    "preempted": theme.WARN_AMBER,
    "paused": theme.WARN_AMBER,
    "resumed": "#2563eb",
    "finished": theme.OK_GREEN,
    "failed": theme.URGENT_RED,
}
OTHER_COLOUR = "#64748b"
TRAY_ICONS = {
    "preempted": QSystemTrayIcon.Warning,
    "paused": QSystemTrayIcon.Warning,
    "failed": QSystemTrayIcon.Critical,
}
MAX_ITEMS = 200


def _readable(colour: str, dark: bool) -> str:
    c = QColor(colour)
    return (c.lighter(150) if dark and c.lightness() < 150 else c).name()


def as_notification(value: Any) -> Notification:
    """A store Notification from itself or from a dict with the same fields."""
    if isinstance(value, Notification):
        return value
    if isinstance(value, dict):
        return Notification(int(value.get("seq") or 0), float(value.get("ts") or time.time()),
                            str(value.get("owner", "")), value.get("job_id"), str(value.get("kind", "")),
                            str(value.get("message", "")))
    raise TypeError(f"not a notification: {value!r}")


def when(ts: float, now: float | None = None) -> str:
    t = time.localtime(ts)
    today = time.localtime(now if now is not None else time.time())
    if t[:3] == today[:3]:
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%Y-%m-%d %H:%M", t)


def title_of(n: Notification) -> str:
    job = f"Job {n.job_id}" if n.job_id is not None else "Cutline"
    return f"{job} {n.kind}"


class NotificationRow(QFrame):
    """One notification: a coloured kind badge, its time and the wrapped message."""

    def __init__(self, notification: Notification, unread: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("notificationRow")
        self.notification = notification
        self.unread = unread
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(3)
        top = QHBoxLayout()
        top.setSpacing(8)
        self.kind_label = QLabel(f"●  {notification.kind.upper()}")
        self.kind_label.setFont(theme.heading_font(0.9))
        self.job_label = QLabel(f"job {notification.job_id}" if notification.job_id is not None else "")
        self.job_label.setFont(theme.heading_font(0.9))
        self.time_label = QLabel(when(notification.ts))
        self.time_label.setFont(theme.heading_font(0.85, bold=False))
        self.time_label.setToolTip(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(notification.ts)))
        top.addWidget(self.kind_label)
        top.addWidget(self.job_label)
        top.addStretch(1)
        top.addWidget(self.time_label)
        layout.addLayout(top)
        self.message_label = QLabel(notification.message)
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.message_label.setToolTip(f"to {notification.owner}")
        layout.addWidget(self.message_label)
        self.apply_colours()

    @property
    def colour(self) -> str:
        return KIND_COLOURS.get(self.notification.kind, OTHER_COLOUR)

    def set_unread(self, unread: bool) -> None:
        if unread != self.unread:
            self.unread = unread
            self.apply_colours()

    def apply_colours(self) -> None:
        dark = theme.is_dark()
        colour = _readable(self.colour, dark)
        muted = "#9ca3af" if dark else "#4b5563"
        if self.unread:
            tint = QColor(self.colour)
            tint.setAlpha(40 if dark else 22)
            background = f"rgba({tint.red()}, {tint.green()}, {tint.blue()}, {tint.alpha()})"
        else:
            background = "transparent"
        border = "#3b424d" if dark else "#d1d5db"
        self.setStyleSheet(
            f"QFrame#notificationRow {{ background: {background}; border: 1px solid {border};"
            f" border-left: 5px solid {self.colour}; border-radius: 6px; }}")
        self.kind_label.setStyleSheet(f"color: {colour};")
        self.job_label.setStyleSheet(f"color: {muted};")
        self.time_label.setStyleSheet(f"color: {muted};")
        font = self.message_label.font()
        font.setPointSizeF(theme.BASE_POINT_SIZE * 1.05)
        font.setBold(self.unread)
        self.message_label.setFont(font)


class NotificationsView(QWidget):
    """The notification list. Public: `add(notification, popup=False) -> bool`, `load(engine, owner=None)`,
    `mark_all_read()`, `show_message(notification) -> bool`, `unread` (int), `unreadChanged(int)`,
    `notifications` (newest first), `rows`, `last_read_seq`, `owner`, `tray` (QSystemTrayIcon or None).

    `tray`: True makes a tray icon where the desktop has a system tray; pass an existing
    QSystemTrayIcon to share the main window's, or False for none."""

    unreadChanged = Signal(int)

    def __init__(self, parent: QWidget | None = None, *, tray: bool | QSystemTrayIcon | None = True,
                 max_items: int = MAX_ITEMS) -> None:
        super().__init__(parent)
        self.rows: list[NotificationRow] = []
        self.max_items = max_items
        self.last_read_seq = 0
        self.owner: str | None = None
        self._unread = 0
        self._recolour_pending = False

        if isinstance(tray, QSystemTrayIcon):
            self.tray: QSystemTrayIcon | None = tray
        elif tray and QSystemTrayIcon.isSystemTrayAvailable():
            icon = QApplication.windowIcon()
            if icon.isNull():
                icon = self.style().standardIcon(QStyle.SP_ComputerIcon)
            self.tray = QSystemTrayIcon(icon, self)
            self.tray.setToolTip("Cutline")
            self.tray.show()
        else:
            self.tray = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(6)
        header = QHBoxLayout()
        self.title_label = QLabel("Notifications")
        self.title_label.setFont(theme.heading_font(1.3))
        self.unread_label = QLabel()
        self.unread_label.setFont(theme.heading_font(0.9))
        self.mark_read_button = QPushButton("Mark all read")
        self.mark_read_button.clicked.connect(self.mark_all_read)
        header.addWidget(self.title_label)
        header.addWidget(self.unread_label)
        header.addStretch(1)
        header.addWidget(self.mark_read_button)
        layout.addLayout(header)

        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        body = QWidget()
        self._column = QVBoxLayout(body)
        self._column.setContentsMargins(0, 0, 4, 0)
        self._column.setSpacing(6)
        self.empty_label = QLabel("No notifications yet. Owners are told here when their job is preempted, "
                                  "resumes, finishes or fails.")
        self.empty_label.setWordWrap(True)
        self._column.addWidget(self.empty_label)
        self._column.addStretch(1)
        self.scroll.setWidget(body)
        layout.addWidget(self.scroll, 1)
        self._apply_colours()
        self._update_unread()

    # ------------------------------------------------------------------ content

    @property
    def unread(self) -> int:
        return self._unread

    @property
    def notifications(self) -> list[Notification]:
        return [row.notification for row in self.rows]

    def add(self, notification: Notification | dict, *, popup: bool = False) -> bool:
        """Show a notification (a store Notification or the engine's event payload). Returns False
        for one already shown (same seq) or for another owner when `load` chose an owner. With
        `popup`, also shows it as a tray message."""
        n = as_notification(notification)
        if self.owner is not None and n.owner != self.owner:
            return False
        if n.seq and any(r.notification.seq == n.seq for r in self.rows):
            return False
        row = NotificationRow(n, unread=n.seq > self.last_read_seq or not n.seq)
        index = sum(1 for r in self.rows if r.notification.seq > n.seq) if n.seq else 0
        self.rows.insert(index, row)
        self._column.insertWidget(index, row)
        while len(self.rows) > self.max_items:
            old = self.rows.pop()
            self._column.removeWidget(old)
            old.deleteLater()
        self._update_unread()
        if popup:
            self.show_message(n)
        return True

    def load(self, engine, owner: str | None = None) -> int:
        """Replace the list with the store's notifications (for `owner`, or everyone's); returns
        how many are shown. Those after `last_read_seq` count as unread."""
        for row in self.rows:
            self._column.removeWidget(row)
            row.deleteLater()
        self.rows = []
        self.owner = owner
        history = engine.store.notifications(owner=owner)[-self.max_items:]
        for n in history:
            self.add(n)
        self._update_unread()
        return len(self.rows)

    def mark_all_read(self) -> None:
        if self.rows:
            self.last_read_seq = max(self.last_read_seq, max(r.notification.seq for r in self.rows))
        for row in self.rows:
            row.set_unread(False)
        self._update_unread()

    def show_message(self, notification: Notification | dict) -> bool:
        """A desktop tray message; False (and nothing else) where there is no tray."""
        if self.tray is None:
            return False
        n = as_notification(notification)
        self.tray.showMessage(title_of(n), n.message, TRAY_ICONS.get(n.kind, QSystemTrayIcon.Information), 10_000)
        return True

    def _update_unread(self) -> None:
        count = sum(1 for r in self.rows if r.unread)
        self.empty_label.setVisible(not self.rows)
        self.unread_label.setText(f"{count} new" if count else "")
        self.unread_label.setVisible(bool(count))
        self.mark_read_button.setEnabled(bool(count))
        if count != self._unread:
            self._unread = count
            self.unreadChanged.emit(count)

    # ------------------------------------------------------------------ theme

    def _apply_colours(self) -> None:
        self._recolour_pending = False
        dark = theme.is_dark()
        self.unread_label.setStyleSheet(
            f"background: {theme.PRIORITY_COLOURS['normal']}; color: #ffffff; border-radius: 9px; padding: 1px 8px;")
        self.empty_label.setStyleSheet(f"color: {'#9ca3af' if dark else '#4b5563'};")
        for row in self.rows:
            row.apply_colours()

    def changeEvent(self, event) -> None:
        # apply_theme sets the palette before the dark flag: recolour once the event loop turns.
        if event.type() in (QEvent.ApplicationPaletteChange, QEvent.PaletteChange) and not self._recolour_pending:
            self._recolour_pending = True
            QTimer.singleShot(0, self._apply_colours)
        super().changeEvent(event)
