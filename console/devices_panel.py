"""The devices strip: one card per GPU (or CPU slot) with its load, its history and its job.

Readable from a step back: utilisation is a large number, the job on the device is named in its
priority's colour, a free device says "free" in green, and the device kept for urgent work carries a
red "reserved for urgent" badge. It only shows: it reads `engine.monitor.sample()` and the store's
active jobs on a timer and never changes anything.
"""
from __future__ import annotations

import logging
from collections import deque

import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt, QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from engine.devices import Device, DeviceSample
from engine.jobs import JobState
from engine.store import JobRecord

from . import theme

log = logging.getLogger("cutline.console")

HISTORY = 60  # samples kept per sparkline (one minute at the default interval)
ACTIVE = {s for s in JobState if s.is_active}
UTIL_COLOUR = "#2563eb"
MEMORY_COLOUR = "#7c3aed"

_STATE_WORDS = {
    JobState.STARTING: "starting",
    JobState.RUNNING: "running",
    JobState.PREEMPTING: "stepping aside (saving its state)",
}


def readable(colour: str | QColor, dark: bool) -> str:
    """A priority/state colour made legible on the current background (lighter on dark)."""
    c = QColor(colour)
    if dark and c.lightness() < 150:
        c = c.lighter(150)
    return c.name()


def _set_style(widget: QWidget, css: str) -> None:
    """Set a style sheet only when it changes (re-polishing every second costs)."""
    if widget.styleSheet() != css:
        widget.setStyleSheet(css)


def _muted(dark: bool) -> str:
    return "#9ca3af" if dark else "#4b5563"


def _gb(value: int | None) -> str:
    return "—" if value is None else f"{value / 1e9:.1f}"


def _job_text(job: JobRecord) -> str:
    return f"job {job.id} · {job.name} ({job.priority.label})"


class Sparkline(pg.PlotWidget):
    """A tiny, axis-less line with a filled area, on a fixed 0-100 scale."""

    def __init__(self, colour: str, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent, background=None)
        self.colour = colour
        self.setFixedHeight(44)
        self.setMinimumWidth(80)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setFrameShape(QFrame.NoFrame)
        self.setAttribute(Qt.WA_TransparentForMouseEvents)
        plot = self.getPlotItem()
        for axis in ("left", "bottom", "top", "right"):
            plot.hideAxis(axis)
        plot.hideButtons()
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)
        plot.layout.setContentsMargins(0, 2, 0, 2)
        self.setXRange(0, HISTORY - 1, padding=0)
        self.setYRange(0, 100, padding=0.02)
        fill = QColor(colour)
        fill.setAlpha(60)
        self.curve = self.plot([], [], pen=pg.mkPen(colour, width=2), fillLevel=0, brush=fill)

    def set_values(self, values) -> None:
        ys = [v for v in values]
        offset = HISTORY - len(ys)  # newest sample at the right edge
        xs = [offset + i for i in range(len(ys))]
        keep = [(x, y) for x, y in zip(xs, ys) if y is not None]
        self.curve.setData([x for x, _ in keep], [y for _, y in keep])


class DeviceCard(QFrame):
    """One device. Attributes tests and the main window read: `device`, `jobs` (active jobs on it,
    the one holding it first), `reserved`, `util_history`, `memory_history` (percent, newest last),
    `last_sample`, and the labels `title_label`, `job_label`, `next_label`, `reserved_label`,
    `util_label`, `memory_percent_label`, `memory_label` (used / total GB), `temp_label`, `power_label`."""

    def __init__(self, device: Device, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("deviceCard")
        self.device = device
        self.jobs: list[JobRecord] = []
        self.reserved = False
        self.last_sample: DeviceSample | None = None
        self.util_history: deque[float | None] = deque(maxlen=HISTORY)
        self.memory_history: deque[float | None] = deque(maxlen=HISTORY)
        self._spark_background = ""

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.setSpacing(4)

        self.title_label = QLabel(f"{device.id} · {device.kind.upper()}")
        self.title_label.setFont(theme.heading_font(1.2))
        layout.addWidget(self.title_label)
        self.reserved_label = QLabel("RESERVED FOR URGENT JOBS")
        self.reserved_label.setFont(theme.heading_font(0.8))
        self.reserved_label.setToolTip("Kept free for urgent jobs (setting reserved_device)")
        self.reserved_label.hide()
        layout.addWidget(self.reserved_label, 0, Qt.AlignLeft)

        self.name_label = QLabel(device.name)
        self.name_label.setWordWrap(True)
        self.name_label.setFont(theme.heading_font(0.8, bold=False))
        self.name_label.setToolTip(device.name)
        layout.addWidget(self.name_label)

        self.job_label = QLabel("free")
        self.job_label.setWordWrap(True)
        self.job_label.setFont(theme.heading_font(1.1))
        self.job_detail_label = QLabel()
        self.job_detail_label.setWordWrap(True)
        self.job_detail_label.setFont(theme.heading_font(0.85, bold=False))
        self.job_detail_label.hide()
        self.next_label = QLabel()
        self.next_label.setWordWrap(True)
        self.next_label.setFont(theme.heading_font(0.85))
        self.next_label.hide()
        layout.addWidget(self.job_label)
        layout.addWidget(self.job_detail_label)
        layout.addWidget(self.next_label)

        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(0)
        grid.setContentsMargins(0, 4, 0, 0)
        self.util_caption = QLabel("UTILISATION")
        self.util_label = QLabel("—")
        self.util_label.setFont(theme.heading_font(2.3))
        self.util_spark = Sparkline(UTIL_COLOUR)
        self.memory_caption = QLabel("MEMORY")
        self.memory_percent_label = QLabel("—")
        self.memory_percent_label.setFont(theme.heading_font(1.8))
        self.memory_label = QLabel("—")  # used / total GB
        self.memory_label.setFont(theme.heading_font(0.9))
        self.memory_spark = Sparkline(MEMORY_COLOUR)
        self.captions = (self.util_caption, self.memory_caption)
        for caption in self.captions:
            caption.setFont(theme.heading_font(0.72))
        grid.addWidget(self.util_caption, 0, 0)
        grid.addWidget(self.util_label, 1, 0, Qt.AlignLeft | Qt.AlignVCenter)
        grid.addWidget(self.util_spark, 0, 1, 2, 1, Qt.AlignVCenter)
        grid.addWidget(self.memory_caption, 2, 0)
        grid.addWidget(self.memory_percent_label, 3, 0, Qt.AlignLeft | Qt.AlignVCenter)
        grid.addWidget(self.memory_label, 4, 0, 1, 2, Qt.AlignLeft | Qt.AlignVCenter)
        grid.addWidget(self.memory_spark, 2, 1, 2, 1, Qt.AlignVCenter)
        grid.setColumnStretch(1, 1)
        grid.setRowMinimumHeight(2, 20)
        self.metrics_grid = grid
        layout.addLayout(grid)

        self.temp_label = QLabel("—")
        self.power_label = QLabel("—")
        for label in (self.temp_label, self.power_label):
            label.setFont(theme.heading_font(1.0))
        env = QHBoxLayout()
        env.setSpacing(6)
        self.temp_caption = QLabel("temp")
        self.power_caption = QLabel("power")
        for caption in (self.temp_caption, self.power_caption):
            caption.setFont(theme.heading_font(0.85, bold=False))
        env.addWidget(self.temp_caption)
        env.addWidget(self.temp_label)
        env.addSpacing(14)
        env.addWidget(self.power_caption)
        env.addWidget(self.power_label)
        env.addStretch(1)
        layout.addLayout(env)
        self.apply_colours()

    # ------------------------------------------------------------------ updating

    def update_from(self, sample: DeviceSample | None, jobs: list[JobRecord], reserved: bool) -> None:
        self.last_sample = sample
        self.reserved = reserved
        self.reserved_label.setVisible(reserved)
        if sample is not None:
            util = sample.utilization
            frac = sample.memory_fraction
            self.util_history.append(util)
            self.memory_history.append(None if frac is None else 100.0 * frac)
            self.util_label.setText("—" if util is None else f"{util:.0f}%")
            self.memory_percent_label.setText("—" if frac is None else f"{100.0 * frac:.0f}%")
            if sample.memory_used is None and sample.memory_total is None:
                self.memory_label.setText("—")
            else:
                self.memory_label.setText(f"{_gb(sample.memory_used)} / {_gb(sample.memory_total)} GB")
            self.temp_label.setText("—" if sample.temperature_c is None else f"{sample.temperature_c:.0f} °C")
            self.power_label.setText("—" if sample.power_w is None else f"{sample.power_w:.0f} W")
            self.util_spark.set_values(self.util_history)
            self.memory_spark.set_values(self.memory_history)
        # The job that holds the device first; a gated urgent job waiting for it comes next.
        self.jobs = sorted(jobs, key=lambda j: (j.gated, -int(j.priority), j.id))
        self.apply_colours()

    def apply_colours(self) -> None:
        dark = theme.is_dark()
        muted = _muted(dark)
        border = "#3b424d" if dark else "#cbd5e1"
        background = "#15181d" if dark else "#ffffff"
        if self.jobs:
            main = self.jobs[0]
            colour = readable(theme.PRIORITY_COLOURS.get(main.priority.label, "#64748b"), dark)
            accent = theme.PRIORITY_COLOURS.get(main.priority.label, "#64748b")
            self.job_label.setText(_job_text(main))
            _set_style(self.job_label, f"color: {colour};")
            detail = _STATE_WORDS.get(main.state, main.state.value)
            if main.epochs:
                detail += f" · epoch {(main.epoch or 0) + 1}/{main.epochs} · {main.progress * 100:.0f}%"
            self.job_detail_label.setText(detail)
            _set_style(self.job_detail_label, f"color: {muted};")
            self.job_detail_label.show()
            tip = [f"{_job_text(j)} — {j.state.value}, owner {j.owner}" for j in self.jobs]
            self.job_label.setToolTip("\n".join(tip))
            if len(self.jobs) > 1:
                nxt = self.jobs[1]
                self.next_label.setText(f"next: {_job_text(nxt)} — preparing")
                nxt_colour = readable(theme.PRIORITY_COLOURS.get(nxt.priority.label, "#64748b"), dark)
                _set_style(self.next_label, f"color: {nxt_colour};")
                self.next_label.show()
            else:
                self.next_label.hide()
        else:
            accent = border
            self.job_label.setText("free")
            self.job_label.setToolTip("No job on this device")
            _set_style(self.job_label, f"color: {readable(theme.OK_GREEN, dark)};")
            self.job_detail_label.hide()
            self.next_label.hide()
        red = readable(theme.URGENT_RED, dark)
        _set_style(self.reserved_label, f"color: {red}; border: 1.5px solid {red}; border-radius: 4px; padding: 1px 6px;")
        style = (f"QFrame#deviceCard {{ background: {background}; border: 1px solid {border};"
                 f" border-left: 5px solid {accent}; border-radius: 8px; }}")
        _set_style(self, style)
        for label in (*self.captions, self.name_label, self.temp_caption, self.power_caption,
                      self.memory_label):
            _set_style(label, f"color: {muted};")
        if background != self._spark_background:
            self._spark_background = background
            for spark in (self.util_spark, self.memory_spark):
                spark.setBackground(background)


class PoolCard(QFrame):
    """A cluster pool (Slurm): the cluster places its jobs, so the card shows what Cutline has
    there (running and pending jobs) and whether the cluster answers."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.setFrameShape(QFrame.StyledPanel)
        column = QVBoxLayout(self)
        column.setContentsMargins(10, 8, 10, 8)
        self.title_label = QLabel(f"{name} · cluster pool")
        self.title_label.setFont(theme.heading_font(1.1))
        self.counts_label = QLabel()
        self.counts_label.setFont(theme.heading_font(1.4))
        self.jobs_label = QLabel()
        self.jobs_label.setWordWrap(True)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        for label in (self.title_label, self.counts_label, self.jobs_label, self.status_label):
            column.addWidget(label)

    def update_from(self, jobs: list[JobRecord], status: dict) -> None:
        running = [j for j in jobs if j.state.value == "running"]
        waiting = [j for j in jobs if j.state.value != "running"]
        self.counts_label.setText(f"{len(running)} running · {len(waiting)} pending")
        self.jobs_label.setText("\n".join(f"job {j.id} · {j.name} ({j.priority.label}, {j.state.value})"
                                          for j in jobs[:6]) or "no jobs there")
        note = status.get(self.name) or status.get("standby") or ""
        self.status_label.setText(f"{self.name}: {note}")


class DevicesPanel(QWidget):
    """Cards for every device of `engine`, stacked in a scroll area, refreshed every `interval_ms`.

    Public: `refresh()`, `cards` ({device_id: DeviceCard}), `timer` (QTimer; stop it to freeze),
    `summary_label` ("1 busy · 1 free"). Reads only."""

    def __init__(self, engine, parent: QWidget | None = None, interval_ms: int = 1000) -> None:
        super().__init__(parent)
        self.engine = engine
        self.cards: dict[str, DeviceCard] = {}
        self._timer_failures = 0
        self._recolour_pending = False

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(6)
        header = QHBoxLayout()
        header.setContentsMargins(8, 6, 8, 0)
        title = QLabel("Devices")
        title.setFont(theme.heading_font(1.3))
        self.summary_label = QLabel()
        self.summary_label.setFont(theme.heading_font(1.0))
        header.addWidget(title)
        header.addStretch(1)
        header.addWidget(self.summary_label)
        outer.addLayout(header)
        self.backend_label = QLabel(engine.monitor.backend_note)
        self.backend_label.setWordWrap(True)
        self.backend_label.setFont(theme.heading_font(0.8, bold=False))
        self.backend_label.setContentsMargins(8, 0, 8, 0)
        outer.addWidget(self.backend_label)

        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        body = QWidget()
        body.setObjectName("devicesBody")
        self._column = QVBoxLayout(body)
        self._column.setContentsMargins(6, 4, 6, 6)
        self._column.setSpacing(8)
        for device in engine.monitor.devices:
            card = DeviceCard(device)
            self.cards[device.id] = card
            self._column.addWidget(card)
        self.pool_cards: dict[str, PoolCard] = {}
        for name in getattr(engine, "pools", {}):
            self.pool_cards[name] = PoolCard(name)
            self._column.addWidget(self.pool_cards[name])
        self._column.addStretch(1)
        self.scroll.setWidget(body)
        outer.addWidget(self.scroll, 1)
        self.setMinimumWidth(260)
        self._apply_colours()

        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._on_timer)
        self.refresh()
        self.timer.start()

    def refresh(self) -> None:
        """Take one sample of every device and show which job holds each one."""
        samples = {s.device_id: s for s in self.engine.monitor.sample()}
        on_device: dict[str, list[JobRecord]] = {}
        for job in self.engine.store.jobs(ACTIVE):
            if job.device_id:
                on_device.setdefault(job.device_id, []).append(job)
        reserved = self.engine.settings.reserved_device
        for device_id, card in self.cards.items():
            card.update_from(samples.get(device_id), on_device.get(device_id, []), device_id == reserved)
        busy = sum(1 for d in self.cards if on_device.get(d))
        self.summary_label.setText(f"{busy} busy · {len(self.cards) - busy} free")
        if self.pool_cards:
            status = self.engine.status()
            waiting = [j for j in self.engine.store.jobs({JobState.QUEUED}) if j.device_kind in self.pool_cards]
            for name, card in self.pool_cards.items():
                card.update_from(on_device.get(name, []) + [j for j in waiting if j.device_kind == name],
                                 status.get(name) if isinstance(status.get(name), dict) else {})

    def _on_timer(self) -> None:
        try:
            self.refresh()
            self._timer_failures = 0
        except Exception:  # engine closing, database briefly unavailable: try again next tick
            self._timer_failures += 1
            if self._timer_failures == 1:
                log.exception("devices panel refresh failed")

    # ------------------------------------------------------------------ theme

    def _apply_colours(self) -> None:
        self._recolour_pending = False
        dark = theme.is_dark()
        self.backend_label.setStyleSheet(f"color: {_muted(dark)};")
        self.summary_label.setStyleSheet(f"color: {_muted(dark)};")
        for card in self.cards.values():
            card.apply_colours()

    def changeEvent(self, event) -> None:
        # apply_theme sets the palette before the dark flag: recolour once the event loop turns.
        if event.type() in (QEvent.ApplicationPaletteChange, QEvent.PaletteChange) and not self._recolour_pending:
            self._recolour_pending = True
            QTimer.singleShot(0, self._apply_colours)
        super().changeEvent(event)
