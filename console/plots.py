"""Live training curves for the selected job(s): losses and learning rate per batch, precision,
recall and mAP per epoch, with the points where a job was preempted and resumed marked. History
comes from the job's event stream, so reopening the console shows the same curves, no gaps.
Selecting several jobs compares them: one curve per job for box loss, mAP50-95 and lr."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from engine import protocol
from engine.events import STREAM_END, EventTail

from . import theme

COMPARE_COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


@dataclass
class JobSeries:
    """Everything plotted for one job, built from its events (history first, then live)."""

    losses: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    lr: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    metrics: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    markers: list[tuple[float, str]] = field(default_factory=list)   # (x, "paused" | "resumed")
    last_x: float = 0.0
    runs: int = 0
    history_end: int = 0   # bytes of the event file already folded in from disk

    def add(self, event: dict) -> bool:
        """Fold one event in; True if something plotted changed."""
        if event.get(STREAM_END, math.inf) <= self.history_end:
            return False  # a live copy of a line the history read already had
        kind = event.get("event")
        if kind == "batch":
            nb = event.get("batches") or 1
            x = event["epoch"] + (event["batch"] + 1) / nb
            for name, value in (event.get("losses") or {}).items():
                xs, ys = self.losses.setdefault(name, ([], []))
                xs.append(x)
                ys.append(value)
            if event.get("lr") is not None:
                self.lr[0].append(x)
                self.lr[1].append(event["lr"])
            self.last_x = x
            return True
        if kind == "epoch":
            x = float(event["epoch"] + 1)
            for name in theme.METRIC_COLOURS:
                if event.get(name) is not None:
                    xs, ys = self.metrics.setdefault(name, ([], []))
                    xs.append(x)
                    ys.append(event[name])
            return True
        if kind == "training":
            self.runs += 1
            if self.runs > 1:
                nb = event.get("batches_per_epoch") or 1
                self.markers.append((event["start_epoch"] + event["start_batch"] / nb, "resumed"))
                return True
        if kind == "preempted" and self.last_x:
            self.markers.append((self.last_x, "paused"))
            return True
        return False

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "JobSeries":
        series = cls()
        tail = EventTail(Path(run_dir) / protocol.EVENTS_FILE)
        for event in tail.read_new():
            series.add(event)
        series.history_end = tail.complete_offset
        return series


class PlotsPanel(QWidget):
    def __init__(self, engine, parent=None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.series: dict[int, JobSeries] = {}
        self.job_ids: list[int] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        self.title = QLabel("Select a job to see its curves")
        self.title.setFont(theme.heading_font(1.1))
        layout.addWidget(self.title)
        self.graphics = pg.GraphicsLayoutWidget()
        layout.addWidget(self.graphics, 1)
        self.loss_plot = self.graphics.addPlot(row=0, col=0, title="Training loss (per batch)")
        self.metric_plot = self.graphics.addPlot(row=0, col=1, title="Validation metrics (per epoch)")
        self.lr_plot = self.graphics.addPlot(row=0, col=2, title="Learning rate")
        for plot in (self.loss_plot, self.metric_plot, self.lr_plot):
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setLabel("bottom", "epoch")
            plot.addLegend(offset=(-8, 8), labelTextSize="9pt")
        self.metric_plot.setYRange(0, 1, padding=0.02)
        self._plot_name = {id(self.loss_plot): "loss", id(self.metric_plot): "metrics", id(self.lr_plot): "lr"}
        self.curves: dict[tuple[str, int, str], pg.PlotDataItem] = {}
        self._markers: list[pg.InfiniteLine] = []
        self.apply_theme()

    def apply_theme(self) -> None:
        background, foreground = theme.plot_colours(theme.is_dark())
        self.graphics.setBackground(background)
        for plot in (self.loss_plot, self.metric_plot, self.lr_plot):
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setPen(foreground)
                plot.getAxis(axis).setTextPen(foreground)
            plot.setTitle(plot.titleLabel.text, color=foreground)
            # An opaque-ish legend box, so its labels never read as part of the curves under it.
            box = pg.mkColor(background)
            box.setAlpha(215)
            plot.legend.setBrush(box)
            plot.legend.setPen(pg.mkPen(foreground, width=0.5))
            plot.legend.setLabelTextColor(foreground)

    # ------------------------------------------------------------------ selection and data

    def show_jobs(self, job_ids: list[int]) -> None:
        self.job_ids = list(job_ids)[: len(COMPARE_COLOURS)]
        for job_id in self.job_ids:
            if job_id not in self.series:
                self.series[job_id] = JobSeries.from_run(self.engine.store.job(job_id).run_dir)
        self._rebuild()

    def reload(self, job_id: int) -> None:
        """Forget and re-read a job's history (its run folder is the truth)."""
        self.series.pop(job_id, None)
        if job_id in self.job_ids:
            self.show_jobs(self.job_ids)

    def add_event(self, event: dict) -> None:
        job_id = event.get("job_id")
        series = self.series.get(job_id)
        if series is None:
            return  # not shown and not cached: read from the file when selected
        if series.add(event) and job_id in self.job_ids:
            self._update_data()
            if event.get("event") in ("training", "preempted"):
                self._draw_markers()

    def _rebuild(self) -> None:
        for plot in (self.loss_plot, self.metric_plot, self.lr_plot):
            plot.clear()
            if plot.legend is not None:
                plot.legend.clear()
        self.curves.clear()
        compare = len(self.job_ids) > 1
        for n, job_id in enumerate(self.job_ids):
            job_colour = COMPARE_COLOURS[n]
            tag = f"job {job_id}"
            if compare:
                self._curve(self.loss_plot, "box_loss", job_id, job_colour, f"{tag} box")
                self._curve(self.metric_plot, "mAP50-95", job_id, job_colour, f"{tag} mAP50-95", symbol="o")
            else:
                for name, colour in theme.LOSS_COLOURS.items():
                    self._curve(self.loss_plot, name, job_id, colour, name)
                for name, colour in theme.METRIC_COLOURS.items():
                    self._curve(self.metric_plot, name, job_id, colour, name, symbol="o")
            self._curve(self.lr_plot, "lr", job_id, job_colour if compare else "#0f766e", tag if compare else "lr")
        if not self.job_ids:
            self.title.setText("Select a job to see its curves")
        elif compare:
            self.title.setText("Comparing " + ", ".join(f"job {j}" for j in self.job_ids))
        else:
            job = self.engine.store.job(self.job_ids[0])
            self.title.setText(f"Job {job.id} · {job.name}")
        self._update_data()
        self._draw_markers()

    def _curve(self, plot, name: str, job_id: int, colour: str, label: str, symbol: str | None = None) -> None:
        pen = pg.mkPen(colour, width=2)
        kwargs = {"symbol": symbol, "symbolSize": 6, "symbolBrush": colour, "symbolPen": colour} if symbol else {}
        self.curves[(self._plot_name[id(plot)], job_id, name)] = plot.plot([], [], pen=pen, name=label, **kwargs)

    def _update_data(self) -> None:
        for (_plot, job_id, name), curve in self.curves.items():
            series = self.series.get(job_id)
            if series is None:
                continue
            if name == "lr":
                xs, ys = series.lr
            elif name in series.losses or name in theme.LOSS_COLOURS:
                xs, ys = series.losses.get(name, ([], []))
            else:
                xs, ys = series.metrics.get(name, ([], []))
            curve.setData(xs, ys)
        last_epoch = max((s.last_x for j, s in self.series.items() if j in self.job_ids), default=1.0)
        step = max(1, int(math.ceil(last_epoch / 8)))
        for plot in (self.loss_plot, self.metric_plot, self.lr_plot):
            plot.getAxis("bottom").setTickSpacing(step, step)  # whole epochs, never 2.5

    def _draw_markers(self) -> None:
        for line in self._markers:
            for plot in (self.loss_plot, self.metric_plot, self.lr_plot):
                if line in plot.items:
                    plot.removeItem(line)
        self._markers.clear()
        for job_id in self.job_ids:
            for x, kind in self.series[job_id].markers:
                colour = theme.WARN_AMBER if kind == "paused" else "#2563eb"
                for plot in (self.loss_plot, self.lr_plot):
                    line = pg.InfiniteLine(pos=x, angle=90, pen=pg.mkPen(colour, width=1.5, style=pg.QtCore.Qt.DashLine),
                                           label=kind if plot is self.loss_plot else None,
                                           labelOpts={"position": 0.92, "color": colour})
                    plot.addItem(line)
                    self._markers.append(line)

    def curve_data(self, plot: str, job_id: int, name: str) -> tuple[list, list]:
        """For tests and screenshots: (xs, ys) shown for one curve. plot: loss | metrics | lr."""
        curve = self.curves[(plot, job_id, name)]
        xs, ys = curve.getData()
        return ([] if xs is None else list(xs)), ([] if ys is None else list(ys))
