"""The operations console's main window. It shows and commands the engine; it owns no state.

Layout: toolbar (Submit, the red Emergency retrain, Pause, Resume, Cancel, Jump, Schedule), the
queue table (drag to reorder; a drag upwards is a jump and asks for a reason first), a lower tab
area (plots, job details, audit, notifications), the devices column on the right, and a status
bar (engine, devices busy/free, jumps today against the cap, standby).
"""
from __future__ import annotations

import time

from PySide6.QtCore import QByteArray, QItemSelectionModel, QSettings, QSize, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QSplitter,
    QStyle,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
    QCheckBox,
)

from engine.jobs import JobState, Priority
from engine.operations import OperationError
from engine.spec import SpecError
from engine.store import JobRecord

from . import theme
from .alerts_view import AlertsView
from .audit_view import AuditView
from .bridge import EngineBridge
from .devices_panel import DevicesPanel
from .emergency_dialog import EmergencyDialog
from .job_details import JobDetails
from .jump_dialog import JumpDialog, JumpPlan
from .notifications_view import NotificationsView
from .plots import PlotsPanel
from .schedules_view import SchedulesView
from .queue_model import COLUMNS, QueueModel
from .queue_view import QueueView
from .submit_dialog import SubmitDialog

REFRESH_MS = 250


class MainWindow(QMainWindow):
    def __init__(self, engine, *, settings: QSettings | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.bridge = EngineBridge(engine, self)
        self.qsettings = settings or QSettings("Cutline", "Cutline console")
        self.dialog = None             # the open confirmation / submit dialog, if any (tests use it)
        self.close_choice = None       # for tests: "pause" | "detach" | "cancel" instead of asking
        self.setWindowTitle(f"Cutline — YOLO training operations · {engine.home}")
        self.resize(1500, 920)

        self.model = QueueModel(engine, self)
        self.model.move_requested.connect(self.request_move)
        self.queue_view = QueueView(self.model, self)
        self.queue_view.selectionModel().selectionChanged.connect(self._selection_changed)
        self.queue_view.customContextMenuRequested.connect(self._context_menu)

        self.plots = PlotsPanel(engine, self)
        self.details = JobDetails(engine, self)
        self.audit_view = AuditView(engine, self)
        self.notifications = NotificationsView(self)
        self.notifications.load(engine)
        self.devices_panel = DevicesPanel(engine, self)
        self.schedules_view = SchedulesView(engine, self)
        self.schedules_view.add_requested.connect(self.open_schedule)
        self.alerts_view = AlertsView(engine, self)

        self._build_actions()
        self._build_layout()
        self._build_status_bar()

        self.bridge.job_changed.connect(self._mark_dirty)
        self.bridge.event.connect(self._on_event)
        self.bridge.notification.connect(self._on_notification)
        self.bridge.engine_state.connect(lambda state: self._update_status())
        self._dirty = True
        self._last_refresh = 0.0
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        self.timer.start(REFRESH_MS)
        self.refresh()
        self._restore_layout()

    # ------------------------------------------------------------------ building

    def _build_actions(self) -> None:
        style = self.style()
        self.submit_action = QAction(style.standardIcon(QStyle.SP_FileDialogNewFolder), "Submit…", self)
        self.submit_action.setShortcut(QKeySequence.New)
        self.submit_action.triggered.connect(self.open_submit)
        self.emergency_action = QAction(style.standardIcon(QStyle.SP_MessageBoxWarning), "Emergency retrain", self)
        self.emergency_action.setShortcut(QKeySequence("Ctrl+E"))
        self.emergency_action.setToolTip("Urgent retrain from the selected job's weights, now (Ctrl+E)")
        self.emergency_action.triggered.connect(self.open_emergency)
        self.jump_action = QAction(style.standardIcon(QStyle.SP_ArrowUp), "Jump to front…", self)
        self.jump_action.setShortcut(QKeySequence("Ctrl+J"))
        self.jump_action.triggered.connect(self.jump_selected)
        self.pause_action = QAction(style.standardIcon(QStyle.SP_MediaPause), "Pause", self)
        self.pause_action.setShortcut(QKeySequence("Ctrl+P"))
        self.pause_action.triggered.connect(lambda: self._each_selected(self.engine.ops.pause))
        self.resume_action = QAction(style.standardIcon(QStyle.SP_MediaPlay), "Resume", self)
        self.resume_action.setShortcut(QKeySequence("Ctrl+R"))
        self.resume_action.triggered.connect(lambda: self._each_selected(self._resume_or_retry))
        self.cancel_action = QAction(style.standardIcon(QStyle.SP_DialogCancelButton), "Cancel job", self)
        self.cancel_action.setShortcut(QKeySequence.Delete)
        self.cancel_action.triggered.connect(self.cancel_selected)
        self.schedule_action = QAction(style.standardIcon(QStyle.SP_BrowserReload), "Schedule…", self)
        self.schedule_action.triggered.connect(self.open_schedule)
        self.move_up_action = QAction("Move up", self)
        self.move_up_action.setShortcut(QKeySequence("Ctrl+Up"))
        self.move_up_action.triggered.connect(lambda: self.move_selected(-1))
        self.move_down_action = QAction("Move down", self)
        self.move_down_action.setShortcut(QKeySequence("Ctrl+Down"))
        self.move_down_action.triggered.connect(lambda: self.move_selected(+1))
        self.theme_action = QAction("Dark theme", self)
        self.theme_action.setCheckable(True)
        self.theme_action.setChecked(theme.is_dark())
        self.theme_action.setShortcut(QKeySequence("Ctrl+Shift+D"))
        self.theme_action.toggled.connect(self.set_dark)
        for action in (self.move_up_action, self.move_down_action, self.theme_action):
            self.addAction(action)

        toolbar = QToolBar("Main", self)
        toolbar.setObjectName("main-toolbar")
        toolbar.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        toolbar.setIconSize(QSize(22, 22))
        toolbar.setMovable(False)
        toolbar.addAction(self.submit_action)
        toolbar.addSeparator()
        toolbar.addAction(self.emergency_action)
        button = toolbar.widgetForAction(self.emergency_action)
        button.setObjectName("emergency-button")
        button.setStyleSheet(f"background: {theme.URGENT_RED}; color: white; font-weight: bold; "
                             "border-radius: 5px; padding: 6px 14px; margin: 2px 6px;")
        toolbar.addSeparator()
        for action in (self.jump_action, self.pause_action, self.resume_action, self.cancel_action):
            toolbar.addAction(action)
        toolbar.addSeparator()
        toolbar.addAction(self.schedule_action)
        spacer = QWidget()
        spacer.setSizePolicy(spacer.sizePolicy().horizontalPolicy().Expanding, spacer.sizePolicy().verticalPolicy())
        toolbar.addWidget(spacer)
        toolbar.addAction(self.theme_action)
        self.addToolBar(toolbar)

    def _build_layout(self) -> None:
        filters = QHBoxLayout()
        heading = QLabel("Queue")
        heading.setFont(theme.heading_font(1.3))
        filters.addWidget(heading)
        filters.addStretch(1)
        filters.addWidget(QLabel("State"))
        self.state_filter = QComboBox()
        self.state_filter.addItems(["all not ended", "running", "queued", "paused", "preempting"])
        self.state_filter.currentTextChanged.connect(self._filters_changed)
        filters.addWidget(self.state_filter)
        filters.addWidget(QLabel("Owner"))
        self.owner_filter = QLineEdit()
        self.owner_filter.setPlaceholderText("any")
        self.owner_filter.setMaximumWidth(140)
        self.owner_filter.textChanged.connect(self._filters_changed)
        filters.addWidget(self.owner_filter)
        self.ended_filter = QCheckBox("Show ended")
        self.ended_filter.setChecked(self.model.filters.show_ended)
        self.ended_filter.toggled.connect(self._filters_changed)
        filters.addWidget(self.ended_filter)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(6, 6, 6, 0)
        top_layout.addLayout(filters)
        top_layout.addWidget(self.queue_view, 1)

        self.tabs = QTabWidget()
        self.tabs.addTab(self.plots, "Plots")
        self.tabs.addTab(self.details, "Details")
        self.tabs.addTab(self.audit_view, "Audit")
        self.tabs.addTab(self.notifications, "Notifications")
        self.tabs.addTab(self.schedules_view, "Schedules")
        self.tabs.addTab(self.alerts_view, "Alerts")
        self.tabs.currentChanged.connect(self._tab_changed)

        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        self.setCentralWidget(self.splitter)

        dock = self.devices_dock = QDockWidget("Devices", self)
        dock.setObjectName("devices-dock")
        dock.setWidget(self.devices_panel)
        dock.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetFloatable)
        dock.setTitleBarWidget(QWidget())  # the panel's own "Devices" heading is the title
        self.addDockWidget(Qt.RightDockWidgetArea, dock)
        self.resizeDocks([dock], [320], Qt.Horizontal)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.engine_label = QLabel()
        self.devices_label = QLabel()
        self.jumps_label = QLabel()
        self.standby_label = QLabel()
        for label in (self.engine_label, self.devices_label, self.jumps_label, self.standby_label):
            label.setContentsMargins(8, 0, 8, 0)
            bar.addPermanentWidget(label)

    # ------------------------------------------------------------------ refresh

    def _mark_dirty(self, *_args) -> None:
        self._dirty = True

    def _tick(self) -> None:
        if self.engine.closed:  # shut down under us (tests, scripts): nothing left to show
            self.timer.stop()
            return
        now = time.monotonic()
        if self._dirty or self.engine.store.changed("console") or now - self._last_refresh > 1.0:
            self._dirty = False
            self._last_refresh = now
            self.refresh()
        self._update_status()

    def refresh(self) -> None:
        selected = self.selected_ids()
        self.model.refresh()
        self._reselect(selected)
        self.details.refresh()
        if self.tabs.currentWidget() is self.audit_view:
            self.audit_view.refresh()
        self._update_actions()

    def _update_status(self) -> None:
        status = self.engine.status()
        colour = theme.OK_GREEN if status["state"] == "running" else theme.WARN_AMBER
        self.engine_label.setText(f"<b style='color:{colour}'>engine {status['state']}</b>"
                                  + (f" · <span style='color:{theme.URGENT_RED}'>{status['last_error']}</span>"
                                     if status.get("last_error") else ""))
        free = status["devices"] - status["devices_busy"]
        self.devices_label.setText(f"devices {status['devices_busy']} busy / {free} free")
        used, cap = status["preemptions_today"], status["daily_preemption_cap"]
        self.jumps_label.setText(f"preemptions today <b>{used}/{cap}</b>")
        self.jumps_label.setStyleSheet(f"color: {theme.URGENT_RED};" if used >= cap else "")
        pools = "".join(f" · {name}: {status[name].get(name, status[name].get('standby', ''))}"
                        for name in getattr(self.engine, "pools", {}) if isinstance(status.get(name), dict))
        self.standby_label.setText(f"standby {status.get('standby', 'off')}{pools}")

    def _filters_changed(self) -> None:
        text = self.state_filter.currentText()
        self.model.filters.states = frozenset() if text.startswith("all") else frozenset({text})
        self.model.filters.owner = self.owner_filter.text().strip()
        self.model.filters.show_ended = self.ended_filter.isChecked()
        self.refresh()

    def _on_event(self, event: dict) -> None:
        if event.get("event") == "batch":
            self.model.note_batch(event["job_id"], event["ts"])
        self.plots.add_event(event)
        self.details.add_event(event)

    def _on_notification(self, notification) -> None:
        self.notifications.add(notification)
        self.notifications.show_message(notification)
        self._update_notification_tab()

    def _update_notification_tab(self) -> None:
        unread = self.notifications.unread
        self.tabs.setTabText(self.tabs.indexOf(self.notifications),
                             f"Notifications ({unread})" if unread else "Notifications")

    def show_tab(self, name: str) -> None:
        """Bring a tab forward by its lower-case title ("plots", "audit", ...)."""
        for index in range(self.tabs.count()):
            if self.tabs.tabText(index).split(" (")[0].lower() == name:
                self.tabs.setCurrentIndex(index)
                return
        raise ValueError(f"no tab named {name!r}")

    def _tab_changed(self, index: int) -> None:
        widget = self.tabs.widget(index)
        if widget is self.audit_view:
            self.audit_view.refresh()
        elif widget is self.schedules_view:
            self.schedules_view.refresh()
        elif widget is self.alerts_view:
            self.alerts_view.refresh()
        elif widget is self.notifications:
            self.notifications.mark_all_read()
            self._update_notification_tab()

    # ------------------------------------------------------------------ selection

    def selected_ids(self) -> list[int]:
        rows = sorted({i.row() for i in self.queue_view.selectionModel().selectedRows()})
        return [self.model.jobs[r].id for r in rows if r < len(self.model.jobs)]

    def selected_jobs(self) -> list[JobRecord]:
        return [self.engine.store.job(i) for i in self.selected_ids()]

    def select_job(self, job_id: int) -> None:
        self._reselect([job_id])

    def _reselect(self, ids: list[int]) -> None:
        selection = self.queue_view.selectionModel()
        if [i for i in ids] == self.selected_ids():
            return
        selection.blockSignals(True)
        selection.clearSelection()
        for job_id in ids:
            row = self.model.row_of(job_id)
            if row is not None:
                selection.select(self.model.index(row, 0), QItemSelectionModel.Select | QItemSelectionModel.Rows)
        selection.blockSignals(False)
        self.queue_view.viewport().update()
        self._selection_changed()

    def _selection_changed(self, *_args) -> None:
        ids = self.selected_ids()
        if ids != self.plots.job_ids:
            self.plots.show_jobs(ids)
        self.details.show_job(ids[0] if ids else None)
        self._update_actions()

    def _update_actions(self) -> None:
        jobs = [j for j in (self.model.job_at(self.model.row_of(i)) for i in self.selected_ids()) if j]
        states = {j.state for j in jobs}
        self.pause_action.setEnabled(any(s in (JobState.QUEUED, JobState.STARTING, JobState.RUNNING) for s in states))
        self.resume_action.setEnabled(any(s in (JobState.PAUSED, JobState.FAILED) for s in states))
        self.cancel_action.setEnabled(any(not s.is_terminal for s in states))
        self.jump_action.setEnabled(len(jobs) == 1 and not jobs[0].state.is_terminal)

    # ------------------------------------------------------------------ commands

    def _run(self, operation, *args, **kwargs):
        """Carry out an engine operation; a refusal is shown, never raised into Qt."""
        try:
            result = operation(*args, **kwargs)
        except (OperationError, SpecError, ValueError, LookupError) as e:
            QMessageBox.warning(self, "Cutline", str(e))
            return None
        self.engine.wake()
        self._dirty = True
        return result

    def _each_selected(self, operation) -> None:
        for job_id in self.selected_ids():
            self._run(operation, job_id)

    def _resume_or_retry(self, job_id: int):
        job = self.engine.store.job(job_id)
        return self.engine.ops.retry(job_id) if job.state is JobState.FAILED else self.engine.ops.resume(job_id)

    def cancel_selected(self) -> None:
        jobs = [j for j in self.selected_jobs() if not j.state.is_terminal]
        if not jobs:
            return
        running = [j for j in jobs if j.state.is_active]
        text = f"Cancel {len(jobs)} job(s)?" + (" Running ones save a checkpoint first." if running else "")
        if self.close_choice is None and QMessageBox.question(self, "Cancel jobs", text) != QMessageBox.Yes:
            return
        for job in jobs:
            self._run(self.engine.ops.cancel, job.id)

    def request_move(self, ids: list[int], before: int | None) -> None:
        """A drag (or keyboard move) asks for this order; a jump is confirmed first."""
        ops = self.engine.ops
        queue = [j for j in ops.queue()]
        if not queue:
            return
        if before is None:
            last = next((j.id for j in reversed(queue) if j.id not in ids), None)
            if last is None:
                return
            plan = [(job_id, None, last) for job_id in reversed(ids)]
        else:
            plan = [(job_id, before, None) for job_id in ids]

        def perform(reason: str | None, operator: str | None) -> list:
            return [ops.move(job_id, before=b, after=a, reason=reason, operator=operator) for job_id, b, a in plan]

        try:
            preview = ops.preview(lambda: perform("preview", None))
        except (OperationError, SpecError, LookupError) as e:
            QMessageBox.warning(self, "Cutline", str(e))
            return
        jumps = [r for r in preview if r.kind == "jump"]
        if any(self.engine.store.job(i).device_kind in getattr(self.engine, "pools", {}) for i in ids):
            self.statusBar().showMessage(
                "Slurm jobs: a new class moves a pending job to that class's partition, and a move up asks "
                "Slurm to start pending jobs in this order (their nice) where the cluster allows; the Why column says what happened",
                15000)
        if not jumps:
            self._run(ops.batch, lambda: perform(None, None))
            return
        names = {j.id: j.name for j in queue}
        moves = [f"Job {r.job.id} “{r.job.name}” moves ahead of "
                 + ", ".join(f"job {p} “{names.get(p, '?')}”" for p in r.passed)
                 + (f" and becomes {r.job.priority.label}" if r.details and r.details.get("from_priority")
                    != r.details.get("to_priority") else "")
                 for r in jumps]
        victims = [v for r in jumps for v in (r.details or {}).get("expected_victims", [])]
        self._confirm(JumpPlan(title=f"Move {len(ids)} job(s) ahead of earlier work" if len(ids) > 1 else
                               f"Move job {ids[0]} ahead of earlier work", moves=moves, victims=victims,
                               expected_start=self._expected_start(jumps[0].job.id, victims)),
                      lambda reason, operator: ops.batch(lambda: perform(reason, operator)))

    def move_selected(self, step: int) -> None:
        ids = self.selected_ids()
        if len(ids) != 1:
            return
        order = [j.id for j in self.model.jobs if not j.state.is_terminal]
        if ids[0] not in order:
            return
        index = order.index(ids[0]) + step
        if not 0 <= index < len(order):
            return
        if step < 0:
            self.request_move(ids, order[index])
        else:
            self.request_move(ids, order[index + 1] if index + 1 < len(order) else None)

    def jump_selected(self) -> None:
        ids = self.selected_ids()
        if len(ids) != 1:
            return
        ops = self.engine.ops
        try:
            preview = ops.preview(lambda: ops.jump(ids[0], reason="preview"))
        except (OperationError, LookupError) as e:
            QMessageBox.warning(self, "Cutline", str(e))
            return
        names = {j.id: j.name for j in ops.queue()}
        victims = (preview.details or {}).get("expected_victims", [])
        plan = JumpPlan(title=f"Jump job {preview.job.id} “{preview.job.name}” to the front",
                        moves=["It becomes urgent and first in line, ahead of "
                               + (", ".join(f"job {p} “{names.get(p, '?')}”" for p in preview.passed) or "nothing")],
                        victims=victims, expected_start=self._expected_start(preview.job.id, victims))
        self._confirm(plan, lambda reason, operator: ops.jump(ids[0], reason=reason, operator=operator))

    def change_priority(self, job_id: int, priority: Priority) -> None:
        ops = self.engine.ops
        job = ops.store.job(job_id)
        if priority <= job.priority:
            self._run(ops.set_priority, job_id, priority)
            return
        preview = ops.preview(lambda: ops.set_priority(job_id, priority, reason="preview"))
        names = {j.id: j.name for j in ops.queue()}
        victims = (preview.details or {}).get("expected_victims", [])
        plan = JumpPlan(title=f"Raise job {job_id} “{job.name}” to {priority.label}",
                        moves=["It moves ahead of " + (", ".join(f"job {p} “{names.get(p, '?')}”"
                                                                 for p in preview.passed) or "no one")],
                        victims=victims, expected_start=self._expected_start(job_id, victims))
        self._confirm(plan, lambda reason, operator: ops.set_priority(job_id, priority, reason=reason,
                                                                       operator=operator))

    def _expected_start(self, job_id: int, victims: list[dict]) -> str:
        if victims:
            return "within seconds, on the device the paused job frees"
        wait = self.model.waits.get(job_id)
        return "as soon as a device frees up" if wait is None else ("now" if wait < 5 else f"in about {int(wait // 60)} min")

    def _confirm(self, plan: JumpPlan, carry_out) -> None:
        dialog = JumpDialog(plan, self)
        self.dialog = dialog

        def accepted() -> None:
            self._run(carry_out, dialog.reason, dialog.operator)
            self.audit_view.refresh()

        dialog.accepted.connect(accepted)
        dialog.finished.connect(lambda _code: setattr(self, "dialog", None))
        dialog.open()

    def open_submit(self) -> None:
        self._open_form(SubmitDialog(self.engine, self, defaults=self._defaults_from_selection()))

    def open_schedule(self) -> None:
        self._open_form(SubmitDialog(self.engine, self, schedule=True, defaults=self._defaults_from_selection()))

    def _defaults_from_selection(self) -> dict:
        jobs = self.selected_jobs()
        if not jobs:
            return {}
        job = jobs[0]
        args = job.train_args or {}
        return {"name": job.name, "data": job.data, "model": job.model, "epochs": args.get("epochs", 50),
                "imgsz": args.get("imgsz", 640), "batch": args.get("batch", 16), "priority": "normal",
                "args": "\n".join(f"{k}: {v}" for k, v in args.items() if k not in ("epochs", "imgsz", "batch"))}

    def open_emergency(self) -> None:
        jobs = self.selected_jobs()
        source = jobs[0] if jobs else self._last_finished()
        dialog = EmergencyDialog(self.engine, source, self)
        self._open_form(dialog, on_accept=lambda: dialog.created and self._after_emergency(dialog.created.id))

    def _after_emergency(self, job_id: int) -> None:
        self.refresh()
        self.select_job(job_id)
        self.tabs.setCurrentWidget(self.plots)

    def _last_finished(self) -> JobRecord | None:
        finished = self.engine.store.jobs({JobState.FINISHED})
        return max(finished, key=lambda j: j.ended_at or 0) if finished else None

    def _open_form(self, dialog, on_accept=None) -> None:
        self.dialog = dialog

        def accepted() -> None:
            self._dirty = True
            self.audit_view.refresh()
            self.schedules_view.refresh()
            if on_accept:
                on_accept()

        dialog.accepted.connect(accepted)
        dialog.finished.connect(lambda _code: setattr(self, "dialog", None))
        dialog.open()

    def _context_menu(self, pos) -> None:
        index = self.queue_view.indexAt(pos)
        job = self.model.job_at(index.row()) if index.isValid() else None
        menu = QMenu(self)
        if job is not None and not job.state.is_terminal:
            priority_menu = menu.addMenu("Priority")
            for p in sorted(Priority, reverse=True):
                action = priority_menu.addAction(p.label)
                action.setCheckable(True)
                action.setChecked(p == job.priority)
                action.triggered.connect(lambda _=False, p=p, j=job.id: self.change_priority(j, p))
            menu.addAction(self.jump_action)
            menu.addSeparator()
        for action in (self.pause_action, self.resume_action, self.cancel_action, self.emergency_action):
            menu.addAction(action)
        menu.popup(self.queue_view.viewport().mapToGlobal(pos))

    # ------------------------------------------------------------------ look and layout

    def set_dark(self, dark: bool) -> None:
        theme.apply_theme(QApplication.instance(), dark)
        self.qsettings.setValue("dark", dark)
        self.plots.apply_theme()
        for widget in (self.devices_panel, self.audit_view, self.notifications):
            if hasattr(widget, "apply_theme"):
                widget.apply_theme()

    def _restore_layout(self) -> None:
        geometry = self.qsettings.value("geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        state = self.qsettings.value("window_state")
        self._dock_sized = isinstance(state, QByteArray) and self.restoreState(state)
        header = self.qsettings.value(f"queue_header/v2/{len(COLUMNS)}")
        if isinstance(header, QByteArray) and self.qsettings.value("queue_header/sized_by_hand", False, type=bool):
            self.queue_view.horizontalHeader().restoreState(header)
            self.queue_view.auto_fit = False
        splitter = self.qsettings.value("splitter")
        if isinstance(splitter, QByteArray):
            self.splitter.restoreState(splitter)
        else:
            self.splitter.setSizes([420, 420])

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._dock_sized:  # first show without a saved layout: a narrower column on small screens
            self._dock_sized = True
            self.resizeDocks([self.devices_dock], [280 if self.width() < 1440 else 320], Qt.Horizontal)

    def save_layout(self) -> None:
        self.qsettings.setValue("geometry", self.saveGeometry())
        self.qsettings.setValue("window_state", self.saveState())
        self.qsettings.setValue(f"queue_header/v2/{len(COLUMNS)}", self.queue_view.horizontalHeader().saveState())
        self.qsettings.setValue("queue_header/sized_by_hand", not self.queue_view.auto_fit)
        self.qsettings.setValue("splitter", self.splitter.saveState())

    # ------------------------------------------------------------------ closing

    def closeEvent(self, event) -> None:
        running = self.engine.store.jobs({JobState.STARTING, JobState.RUNNING, JobState.PREEMPTING})
        choice = self.close_choice or ("pause" if not running else None)
        if choice is None:
            box = QMessageBox(self)
            box.setWindowTitle("Jobs are training")
            box.setText(f"{len(running)} job(s) are training.")
            box.setInformativeText("Pause them safely (each saves a checkpoint and resumes at the next start), "
                                   "or leave them training in the background (the next start adopts them)?")
            pause = box.addButton("Pause all and quit", QMessageBox.AcceptRole)
            detach = box.addButton("Keep training in background", QMessageBox.DestructiveRole)
            box.addButton(QMessageBox.Cancel)
            box.exec()
            clicked = box.clickedButton()
            choice = "pause" if clicked is pause else ("detach" if clicked is detach else "cancel")
        if choice == "cancel":
            event.ignore()
            return
        self.save_layout()
        self.timer.stop()
        self.statusBar().showMessage("Saving checkpoints…" if choice == "pause" else "Leaving workers training…")
        QApplication.processEvents()
        self.engine.shutdown(mode="checkpoint" if choice == "pause" else "detach")
        event.accept()


__all__ = ["MainWindow", "COLUMNS"]
