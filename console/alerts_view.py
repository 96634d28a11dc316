"""The alerts view: what Alertmanager sent and what each alert caused, the rules that map alerts to
emergency retrains, and the HTTP API's address and bearer token.

Top: received alerts, newest first. The "Caused" column says what happened, in one colour per
outcome: a retrain (red, with its job), a duplicate or cooldown (amber: held back on purpose), an
unmatched alert (grey, and counted in the banner above the table: no rule matches it, so the
operator may want one), resolved (green: recorded, never acted on), or an error (red).

Below, side by side: the rules editor (`<home>/alert-rules.yaml`; Validate and Save run the
engine's own checks and a bad text never reaches the file) and API access (the URL, the tokens
with their secrets masked, Show / Copy / Regenerate of the default token, and an Alertmanager
webhook snippet). Like every view it owns no state: it reads the store and the files, and writes
only through the engine's functions (`save_rules`, `TokenStore.regenerate`).
"""
from __future__ import annotations

import html
import logging
import time

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QFont, QFontDatabase, QFontMetrics
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.alerts import alert_events, parse_rules, rules_path, save_rules
from engine.api.tokens import Token, TokenStore
from engine.spec import SpecError

from . import theme

log = logging.getLogger("cutline.console")

COLUMNS = ("Time", "Alert", "Status", "Labels", "Rule", "Caused", "Detail")
TIME_COL, ALERT_COL, STATUS_COL, LABELS_COL, RULE_COL, CAUSED_COL, DETAIL_COL = range(len(COLUMNS))

#: One colour per outcome; retrain and error are also bold.
ACTION_COLOURS = {
    "retrain": theme.URGENT_RED,
    "duplicate": theme.WARN_AMBER,
    "cooldown": theme.WARN_AMBER,
    "unmatched": "#64748b",
    "resolved": theme.OK_GREEN,
    "error": theme.URGENT_RED,
}
BOLD_ACTIONS = {"retrain", "error", "unmatched"}
EVENTS_SHOWN = 500
POLL_MS = 2000
DEFAULT_TOKEN = "default"
MASK = "•" * 16

RULES_TEMPLATE = """\
# Alert rules: which Alertmanager alerts start an emergency retrain.
# Every label under `match` must equal the alert's label; the first rule that matches wins.
# No rules file exists yet. To start, remove the leading "# " from the example below, edit it, Save.
#
# rules:
#   - name: line-3-defects
#     match: {alertname: DefectEscapeRate, line: "3"}
#     retrain:
#       from_job: 12                    # start from this job's weights ... or model: /path/to/best.pt
#       data: /data/line3/data.yaml     # default: that job's own dataset (needed with model:)
#       train_args: {epochs: 30}
#       priority: urgent                # urgent (default) preempts; high / normal / low just queue
#     cooldown_s: 3600                  # no second retrain from this rule within an hour
"""


def local_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def readable(colour: str, dark: bool) -> QColor:
    """A theme colour made light enough to read on the dark palette's background."""
    c = QColor(colour)
    return c.lighter(160) if dark and c.lightness() < 150 else c


def labels_text(labels: dict) -> str:
    """Compact `k=v` pairs, alertname left out (it has its own column)."""
    return " ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")


def caused_text(event: dict) -> str:
    action, job = event["action"], event.get("job_id")
    if action == "retrain":
        return f"RETRAIN · job {job}"
    if action == "duplicate":
        return f"duplicate of job {job}" if job is not None else "duplicate"
    if action == "cooldown":
        return f"cooldown (job {job})" if job is not None else "cooldown"
    if action == "unmatched":
        return "unmatched: no rule"
    return action


def mask(secret: str) -> str:
    """Enough to tell two tokens apart, never enough to use one."""
    return f"{secret[:4]}{MASK}" if len(secret) > 12 else MASK


def webhook_snippet(api_url: str) -> str:
    return (
        "# alertmanager.yml: send alerts to Cutline\n"
        "receivers:\n"
        "  - name: cutline\n"
        "    webhook_configs:\n"
        f"      - url: {api_url}/api/v1/alertmanager\n"
        "        send_resolved: true\n"
        "        http_config:\n"
        "          authorization:\n"
        "            type: Bearer\n"
        "            credentials_file: /path/to/token   # the token above; chmod 600\n"
        "# route:  {receiver: cutline, group_by: [alertname, line]}\n"
        "# write the file: python main.py token show default > /path/to/token\n"
    )


def _monospace() -> QFont:
    font = QFontDatabase.systemFont(QFontDatabase.FixedFont)
    font.setPointSize(theme.BASE_POINT_SIZE - 1)
    return font


class AlertsView(QWidget):
    """Received alerts, the rules editor and API access.

    Public: `refresh()` (re-read alerts, tokens and API address; reloads the editor only when it has
    no unsaved edits), `validate() -> bool`, `save() -> bool`, `reload()`, `regenerate(confirm=True)
    -> Token | None`, `copy_token()`, `events` (the alert events shown, newest first), and the
    widgets: `table`, `summary_label`, `unmatched_only`, `editor`, `path_label`, `problems_label`,
    `rules_status`, `validate_button`, `save_button`, `reload_button`, `url_label`, `tokens_label`,
    `token_edit`, `show_button`, `copy_button`, `regenerate_button`, `token_status`, `snippet`."""

    def __init__(self, engine, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.tokens = TokenStore(engine.home)
        self.events: list[dict] = []
        self._all_events: list[dict] = []
        self._seen: tuple | None = None
        self._loaded_text: str | None = None   # the editor's text as last loaded or saved
        self._file_stamp: tuple | None = None  # (mtime_ns, size) of the rules file when loaded

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(self._build_alerts())
        bottom = QSplitter(Qt.Horizontal)
        bottom.setChildrenCollapsible(False)
        bottom.addWidget(self._build_rules())
        bottom.addWidget(self._build_api())
        bottom.setStretchFactor(0, 3)
        bottom.setStretchFactor(1, 2)
        bottom.setSizes([600, 400])  # the editor is where the work is
        self.bottom_splitter = bottom
        self.splitter.addWidget(bottom)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([170, 430])
        layout.addWidget(self.splitter)

        # New deliveries show up while the tab is open (the main window refreshes it on selection).
        self._poll = QTimer(self, interval=POLL_MS, timeout=self._poll_tick)
        self.reload()
        self.refresh()

    # ------------------------------------------------------------------ building

    def _build_alerts(self) -> QWidget:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 4)
        top = QHBoxLayout()
        heading = QLabel("Received alerts")
        heading.setFont(theme.heading_font(1.15))
        top.addWidget(heading)
        self.summary_label = QLabel()
        self.summary_label.setTextFormat(Qt.RichText)
        top.addWidget(self.summary_label, 1)
        self.unmatched_only = QCheckBox("Only unmatched")
        self.unmatched_only.setToolTip("Alerts no rule matches: the ones that may need a rule")
        self.unmatched_only.toggled.connect(lambda _: self._show_events())
        top.addWidget(self.unmatched_only)
        v.addLayout(top)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.ElideRight)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 12)
        header = self.table.horizontalHeader()
        header.setHighlightSections(False)
        header.setDefaultAlignment(Qt.AlignLeft | Qt.AlignVCenter)
        header.setSectionResizeMode(QHeaderView.Interactive)
        header.setStretchLastSection(True)
        metrics = self.table.fontMetrics()
        bold = QFont(self.table.font())
        bold.setBold(True)
        bold_metrics = QFontMetrics(bold)
        widths = {TIME_COL: metrics.horizontalAdvance("2026-12-31 23:59:59") + 20,
                  ALERT_COL: 190, STATUS_COL: metrics.horizontalAdvance("resolved") + 24, LABELS_COL: 200,
                  RULE_COL: 150, CAUSED_COL: bold_metrics.horizontalAdvance("duplicate of job 9999") + 24}
        for col, width in widths.items():
            self.table.setColumnWidth(col, width)
        self.table.setMinimumHeight(120)
        v.addWidget(self.table, 1)
        return box

    @staticmethod
    def _pane(title: str) -> tuple[QWidget, QVBoxLayout]:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 4, 0, 0)
        heading = QLabel(title)
        heading.setFont(theme.heading_font(1.15))
        v.addWidget(heading)
        return box, v

    def _build_rules(self) -> QWidget:
        box, v = self._pane("Alert rules")
        self.path_label = QLabel()
        self.path_label.setWordWrap(True)
        self.path_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        v.addWidget(self.path_label)
        self.editor = QPlainTextEdit()
        self.editor.setFont(_monospace())
        self.editor.setLineWrapMode(QPlainTextEdit.NoWrap)
        self.editor.setTabChangesFocus(False)
        self.editor.setPlaceholderText("rules:\n  - name: …")
        self.editor.setMinimumHeight(120)
        self.editor.textChanged.connect(self._edited)
        v.addWidget(self.editor, 1)
        self.problems_label = QLabel()
        self.problems_label.setWordWrap(True)
        self.problems_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.problems_label.hide()
        v.addWidget(self.problems_label)
        self.rules_status = QLabel()  # on its own line: a sentence, not squeezed beside the buttons
        self.rules_status.setWordWrap(True)
        v.addWidget(self.rules_status)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.validate_button = QPushButton("Validate")
        self.validate_button.setToolTip("Check the rules without saving them")
        self.validate_button.clicked.connect(self.validate)
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip("Check and save; a text with problems is never written")
        self.save_button.clicked.connect(self.save)
        self.reload_button = QPushButton("Reload")
        self.reload_button.setToolTip("Discard the edits and show the file as it is")
        self.reload_button.clicked.connect(self.reload)
        for button in (self.validate_button, self.save_button, self.reload_button):
            buttons.addWidget(button)
        v.addLayout(buttons)
        return box

    def _build_api(self) -> QWidget:
        box, v = self._pane("API access")
        grid = QGridLayout()
        grid.setColumnStretch(1, 1)
        grid.setHorizontalSpacing(10)
        grid.addWidget(QLabel("URL"), 0, 0)
        self.url_label = QLabel()
        self.url_label.setWordWrap(True)
        self.url_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        grid.addWidget(self.url_label, 0, 1)
        grid.addWidget(QLabel("Tokens"), 1, 0, Qt.AlignTop)
        self.tokens_label = QLabel()
        self.tokens_label.setWordWrap(True)
        self.tokens_label.setTextFormat(Qt.RichText)
        grid.addWidget(self.tokens_label, 1, 1)
        grid.addWidget(QLabel("Secret"), 2, 0)
        row = QHBoxLayout()
        self.token_edit = QLineEdit()
        self.token_edit.setReadOnly(True)
        self.token_edit.setFont(_monospace())
        self.token_edit.setMinimumWidth(120)
        row.addWidget(self.token_edit, 1)
        self.show_button = QPushButton("Show")
        self.show_button.setCheckable(True)
        self.show_button.toggled.connect(lambda _: self._show_token())
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the default token's secret to the clipboard")
        self.copy_button.clicked.connect(self.copy_token)
        self.regenerate_button = QPushButton("Regenerate…")
        self.regenerate_button.setToolTip("A new secret for the default token; the old one stops working at once")
        self.regenerate_button.clicked.connect(lambda: self.regenerate(confirm=True))
        for button in (self.show_button, self.copy_button, self.regenerate_button):
            row.addWidget(button)
        grid.addLayout(row, 2, 1)
        v.addLayout(grid)
        self.token_status = QLabel()
        self.token_status.setWordWrap(True)
        self.token_status.hide()
        v.addWidget(self.token_status)
        line = QFrame()
        line.setFrameShape(QFrame.HLine)
        line.setFrameShadow(QFrame.Sunken)
        v.addWidget(line)
        hint = QLabel("Alertmanager webhook receiver:")
        v.addWidget(hint)
        self.snippet = QPlainTextEdit()
        self.snippet.setReadOnly(True)
        self.snippet.setFont(_monospace())
        self.snippet.setLineWrapMode(QPlainTextEdit.NoWrap)
        self.snippet.setMinimumHeight(100)
        self.snippet.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        v.addWidget(self.snippet, 1)
        return box

    # ------------------------------------------------------------------ refreshing

    def refresh(self) -> None:
        """Re-read the alerts, the tokens and the API address; pick up a rules file changed on disk
        when the editor has no unsaved edits."""
        self._read_events()
        self._show_events()
        self._show_api()
        stamp = self._rules_stamp()
        if stamp != self._file_stamp:
            if self.is_modified():
                self._set_status("The rules file changed on disk; Reload shows it (your edits are lost).",
                                 theme.WARN_AMBER)
            else:
                self.reload()

    def _poll_tick(self) -> None:
        if not self.isVisible():
            return
        try:
            if self._change_key() != self._seen:
                self._read_events()
                self._show_events()
        except Exception:  # the store closed under us (engine shutting down): nothing to show
            log.debug("alerts view poll failed", exc_info=True)
            self._poll.stop()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._poll.start()

    def hideEvent(self, event) -> None:
        super().hideEvent(event)
        self._poll.stop()

    def _change_key(self) -> tuple:
        store = self.engine.store
        with store.lock:
            return tuple(store.conn.execute("SELECT COUNT(*), MAX(seq) FROM alert_events").fetchone())

    def _read_events(self) -> None:
        with self.engine.store.lock:
            self._seen = self._change_key()
            self._all_events = alert_events(self.engine.store, EVENTS_SHOWN)

    def _show_events(self) -> None:
        events = self._all_events
        unmatched = sum(1 for e in events if e["action"] == "unmatched")
        self.events = [e for e in events if e["action"] == "unmatched"] if self.unmatched_only.isChecked() else events
        dark = theme.is_dark()
        self.table.setRowCount(len(self.events))
        for row, e in enumerate(self.events):
            action = e["action"]
            cells = (local_time(e["ts"]), e["alertname"], e["status"], labels_text(e["labels"]),
                     e["rule"] or "—", caused_text(e), e["detail"])
            tip = self._tooltip(e)
            colour = ACTION_COLOURS.get(action)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                item.setData(Qt.UserRole, e.get("job_id") if col == CAUSED_COL else None)
                if col == CAUSED_COL and colour:
                    item.setForeground(readable(colour, dark))
                    if action in BOLD_ACTIONS:
                        font = QFont(self.table.font())
                        font.setBold(True)
                        item.setFont(font)
                elif col == STATUS_COL and e["status"] == "resolved":
                    item.setForeground(readable(theme.OK_GREEN, dark))
                elif col == RULE_COL and not e["rule"]:
                    item.setForeground(readable(ACTION_COLOURS["unmatched"], dark))
                if action == "unmatched" and col in (ALERT_COL, LABELS_COL):
                    font = QFont(self.table.font())
                    font.setBold(True)
                    item.setFont(font)
                if action in ("retrain", "error", "unmatched"):
                    tint = QColor(colour)
                    tint.setAlpha((70 if dark else 40) if action == "unmatched" else (45 if dark else 22))
                    item.setBackground(tint)
                self.table.setItem(row, col, item)
        self._show_summary(len(events), unmatched)

    def _show_summary(self, total: int, unmatched: int) -> None:
        if not total:
            self.summary_label.setText("  none yet: Alertmanager delivers them to the webhook below")
            return
        more = f" (newest {EVENTS_SHOWN})" if total >= EVENTS_SHOWN else ""
        text = f"  {total} received{more}"
        retrains = sum(1 for e in self._all_events if e["action"] == "retrain")
        if retrains:
            text += f" · <b style='color:{readable(theme.URGENT_RED, theme.is_dark()).name()}'>{retrains} retrain(s)</b>"
        if unmatched:
            colour = readable(theme.WARN_AMBER, theme.is_dark()).name()
            text += (f" · <b style='color:{colour}'>{unmatched} unmatched</b>"
                     " <span>(no rule matches their labels: add one below if they should retrain)</span>")
        self.summary_label.setText(text)

    @staticmethod
    def _tooltip(e: dict) -> str:
        lines = [f"<b>{html.escape(e['alertname'])}</b> · {html.escape(e['status'])} · received {local_time(e['ts'])}"]
        annotations = e.get("annotations") or {}
        for key in ("summary", "description"):
            if annotations.get(key):
                lines.append(f"{key}: {html.escape(str(annotations[key]))}")
        for key, value in sorted(annotations.items()):
            if key not in ("summary", "description"):
                lines.append(f"{html.escape(str(key))}: {html.escape(str(value))}")
        if e.get("labels"):
            lines.append("labels: " + html.escape(", ".join(f"{k}={v}" for k, v in sorted(e["labels"].items()))))
        lines.append(f"fingerprint: <code>{html.escape(e.get('fingerprint') or '—')}</code>")
        if e.get("starts_at"):
            lines.append(f"firing since: {html.escape(str(e['starts_at']))}")
        lines.append(f"rule: {html.escape(e.get('rule') or 'none matched')} · by {html.escape(e.get('operator') or '?')}")
        lines.append(f"caused: {html.escape(caused_text(e))}: {html.escape(e.get('detail') or '')}")
        return "<div style='white-space:pre-wrap'>" + "<br>".join(lines) + "</div>"

    # ------------------------------------------------------------------ rules editor

    def _rules_stamp(self) -> tuple | None:
        try:
            st = rules_path(self.engine.home).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> None:
        """Show the rules file as it is (or the commented example when there is none); edits are lost."""
        path = rules_path(self.engine.home)
        self._file_stamp = self._rules_stamp()
        if self._file_stamp is not None:
            text = path.read_text(encoding="utf-8")
            self.path_label.setText(f"File: {path}")
        else:
            text = RULES_TEMPLATE
            self.path_label.setText(f"File: {path} (not created yet; Save creates it)")
        self._loaded_text = text
        self.editor.blockSignals(True)
        self.editor.setPlainText(text)
        self.editor.blockSignals(False)
        self._show_problems([])
        try:
            count = len(parse_rules(text))
            self._set_status(f"{count} rule(s) in the file" if self._file_stamp is not None else
                             "no rules yet: every alert is recorded as unmatched", None)
        except SpecError as e:
            self._show_problems(e.problems, heading="The file on disk has problems (alerts are recorded as errors):")
            self._set_status("", None)

    def is_modified(self) -> bool:
        return self.editor.toPlainText() != self._loaded_text

    def validate(self) -> bool:
        try:
            rules = parse_rules(self.editor.toPlainText())
        except SpecError as e:
            self._show_problems(e.problems)
            self._set_status("not valid", theme.URGENT_RED)
            return False
        self._show_problems([])
        self._set_status(f"valid, {len(rules)} rule(s)" + (" (not saved yet)" if self.is_modified() else ""),
                         theme.OK_GREEN)
        return True

    def save(self) -> bool:
        """Write the editor's text if the engine's checks pass; otherwise show why and write nothing."""
        text = self.editor.toPlainText()
        try:
            rules = save_rules(self.engine.home, text)
        except SpecError as e:
            self._show_problems(e.problems)
            self._set_status("not saved: the file is unchanged", theme.URGENT_RED)
            return False
        except OSError as e:
            self._show_problems([], error=f"could not write {rules_path(self.engine.home)}: {e}")
            self._set_status("not saved", theme.URGENT_RED)
            return False
        self._loaded_text = text
        self._file_stamp = self._rules_stamp()
        self.path_label.setText(f"File: {rules_path(self.engine.home)}")
        self._show_problems([])
        self._set_status(f"saved, {len(rules)} rule(s): used from the next alert on", theme.OK_GREEN)
        return True

    def _edited(self) -> None:
        if self.is_modified():
            self._set_status("edited, not saved", None)

    def _show_problems(self, problems, heading: str | None = None, error: str | None = None) -> None:
        if not problems and not error:
            self.problems_label.clear()
            self.problems_label.hide()
            return
        lines = [html.escape(f"{p.field}: {p.message}", quote=False) for p in problems]
        if error:
            lines.append(html.escape(error, quote=False))
        head = f"<b>{html.escape(heading)}</b><br>" if heading else ""
        self.problems_label.setText(head + "<br>".join(f"• {line}" for line in lines))
        colour = readable(theme.URGENT_RED, theme.is_dark()).name()
        self.problems_label.setStyleSheet(
            f"color: {colour}; border: 1px solid {colour}; border-radius: 4px; padding: 6px;")
        self.problems_label.show()

    def _set_status(self, text: str, colour: str | None) -> None:
        self.rules_status.setText(text)
        self.rules_status.setStyleSheet(
            f"color: {readable(colour, theme.is_dark()).name()}; font-weight: bold;" if colour else "")

    # ------------------------------------------------------------------ API access

    def api_url(self) -> str | None:
        api = getattr(self.engine, "api", None)
        if api is not None:
            return api.url
        try:
            return self.engine.store.meta("api_url")
        except Exception:
            return None

    def _show_api(self) -> None:
        url = self.api_url()
        dark = theme.is_dark()
        if url:
            self.url_label.setText(url)
            self.url_label.setStyleSheet("")
            example = url
        else:
            note = getattr(self.engine, "api_note", None)
            settings = self.engine.settings
            if note is None:
                note = ("off (setting api_enabled is false)" if not settings.api_enabled
                        else "not serving: the engine has not started")
            self.url_label.setText(f"off: {note}" if not note.startswith(("off", "not")) else note)
            self.url_label.setStyleSheet(f"color: {readable(theme.WARN_AMBER, dark).name()};")
            port = settings.api_port or "<port>"
            example = f"http://{settings.api_host}:{port}"
        self.snippet.setPlainText(webhook_snippet(example))
        self._show_tokens()

    def _default_token(self) -> Token | None:
        try:
            return next((t for t in self.tokens.tokens() if t.name == DEFAULT_TOKEN), None)
        except RuntimeError:
            return None

    def _show_tokens(self) -> None:
        try:
            tokens = self.tokens.tokens()
        except RuntimeError as e:  # the file is damaged: say so, offer Regenerate
            tokens = []
            self.tokens_label.setText(f"<span style='color:{readable(theme.URGENT_RED, theme.is_dark()).name()}'>"
                                      f"{html.escape(str(e))}</span>")
        else:
            if tokens:
                self.tokens_label.setText("<br>".join(
                    f"<b>{html.escape(t.name)}</b> <code>{html.escape(mask(t.secret))}</code> · created "
                    f"{local_time(t.created_at) if t.created_at else '?'}" for t in tokens))
            else:
                self.tokens_label.setText("none yet: the engine creates “default” when the API first starts "
                                          "(or use Regenerate)")
        self.tokens_label.setToolTip(f"Stored owner-only in {self.tokens.path}; requests are made as api:NAME")
        self._show_token()

    def _show_token(self) -> None:
        token = self._default_token()
        self.copy_button.setEnabled(token is not None)
        self.show_button.setEnabled(token is not None)
        if token is None:
            self.token_edit.setText("")
            self.token_edit.setPlaceholderText("no default token")
            self.show_button.setChecked(False)
            return
        shown = self.show_button.isChecked()
        self.token_edit.setText(token.secret if shown else mask(token.secret))
        self.token_edit.setCursorPosition(0)
        self.show_button.setText("Hide" if shown else "Show")

    def copy_token(self) -> bool:
        token = self._default_token()
        if token is None:
            return False
        QApplication.clipboard().setText(token.secret)
        self._token_message("Copied the default token to the clipboard.", None)
        return True

    def regenerate(self, confirm: bool = True) -> Token | None:
        """A new secret for the default token; the old one stops working at once. Asks first unless
        `confirm` is False. Returns the new token, or None when the operator declined."""
        if confirm and QMessageBox.question(
                self, "Regenerate API token",
                "Generate a new secret for the default API token?\n\nThe current one stops working at once: "
                "every client that uses it (e.g. Alertmanager's credentials_file) must be updated.",
                QMessageBox.Yes | QMessageBox.Cancel, QMessageBox.Cancel) != QMessageBox.Yes:
            return None
        try:
            token = self.tokens.regenerate(DEFAULT_TOKEN)
        except (OSError, ValueError) as e:
            self._token_message(f"Could not regenerate: {e}", theme.URGENT_RED)
            return None
        self._show_tokens()
        self._token_message("New default token generated; the old one no longer works. Update every client "
                            "that uses it, e.g. the file Alertmanager's credentials_file names.", theme.WARN_AMBER)
        return token

    def _token_message(self, text: str, colour: str | None) -> None:
        self.token_status.setText(text)
        self.token_status.setStyleSheet(
            f"color: {readable(colour, theme.is_dark()).name()}; font-weight: bold;" if colour else "")
        self.token_status.show()


__all__ = ["AlertsView", "RULES_TEMPLATE", "caused_text", "labels_text", "mask", "webhook_snippet"]
