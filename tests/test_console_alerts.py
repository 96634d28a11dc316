"""The console's alerts view over a real engine (not started): real alert events from the receiver
with real rules, the rules editor that never writes a bad text, and the API token settings against
a real API server (a regenerated token's old secret is refused at once)."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from console import theme
from console.alerts_view import (
    ALERT_COL,
    CAUSED_COL,
    COLUMNS,
    LABELS_COL,
    RULE_COL,
    RULES_TEMPLATE,
    STATUS_COL,
    AlertsView,
)
from engine.alerts import AlertReceiver, parse_rules, rules_path, save_rules
from engine.api.server import ApiServer
from engine.api.tokens import TokenStore
from engine.core import Engine
from engine.spec import SpecError

from engine_runs import TEST_SETTINGS
from test_alerts import RULES, alert
from test_api import call


@pytest.fixture
def engine(tmp_path):
    eng = Engine(tmp_path / "home", use_nvml=False, settings={**TEST_SETTINGS})
    yield eng
    eng.shutdown()


@pytest.fixture
def rules_text(tiny_dataset, baseline_run) -> str:
    return RULES.format(model=baseline_run / "weights" / "best.pt", data=tiny_dataset, cooldown=0)


def open_view(qtbot, engine) -> AlertsView:
    view = AlertsView(engine)
    qtbot.addWidget(view)
    view.resize(1400, 600)
    view.show()
    return view


def rows(view: AlertsView) -> list[list[str]]:
    return [[view.table.item(r, c).text() for c in range(len(COLUMNS))] for r in range(view.table.rowCount())]


def test_received_alerts_show_what_each_caused_newest_first(qtbot, engine, rules_text):
    save_rules(engine.home, rules_text)
    view = open_view(qtbot, engine)
    assert view.table.rowCount() == 0

    receiver = AlertReceiver(engine.ops, engine.home)
    first = receiver.receive({"alerts": [alert("f1")]}, operator="alertmanager:default")
    job_id = first[0].job_id
    assert first[0].action == "retrain" and job_id is not None
    # Re-sent by Alertmanager, plus an alert no rule matches.
    receiver.receive({"alerts": [alert("f1"), alert("f7", alertname="ConveyorStopped", line="5")]},
                     operator="alertmanager:default")
    view.refresh()

    table = rows(view)
    assert len(table) == 3
    assert [r[CAUSED_COL] for r in table] == ["unmatched: no rule", f"duplicate of job {job_id}",
                                              f"RETRAIN · job {job_id}"]
    unmatched, duplicate, retrain = table
    assert unmatched[ALERT_COL] == "ConveyorStopped" and unmatched[LABELS_COL] == "line=5"
    assert unmatched[RULE_COL] == "—"
    assert retrain[ALERT_COL] == "DefectEscapeRate" and retrain[STATUS_COL] == "firing"
    assert retrain[RULE_COL] == duplicate[RULE_COL] == "line-3-defects"
    assert retrain[-1] == f"submitted urgent retrain job {job_id}"

    # Colours: the retrain red and bold, the duplicate amber, the unmatched grey (and counted on top).
    retrain_item, duplicate_item = view.table.item(2, CAUSED_COL), view.table.item(1, CAUSED_COL)
    assert retrain_item.foreground().color().name() == theme.URGENT_RED and retrain_item.font().bold()
    assert duplicate_item.foreground().color().name() == theme.WARN_AMBER
    assert view.table.item(0, CAUSED_COL).foreground().color().name() == "#64748b"
    assert "1 unmatched" in view.summary_label.text() and "1 retrain(s)" in view.summary_label.text()
    tip = view.table.item(2, ALERT_COL).data(Qt.ToolTipRole)
    assert "defect escape rate 28% on line 3" in tip and "cracks from a worn mould" in tip and "f1" in tip

    view.unmatched_only.setChecked(True)
    assert [r[ALERT_COL] for r in rows(view)] == ["ConveyorStopped"]
    view.unmatched_only.setChecked(False)
    assert view.table.rowCount() == 3

    # A resolved notification is recorded, green, and causes nothing.
    receiver.receive({"alerts": [alert("f1", status="resolved")]}, operator="alertmanager:default")
    view.refresh()
    assert rows(view)[0][CAUSED_COL] == "resolved" and rows(view)[0][STATUS_COL] == "resolved"
    assert view.table.item(0, CAUSED_COL).foreground().color().name() == theme.OK_GREEN
    assert len(engine.store.jobs()) == 1


def test_rule_editor_refuses_bad_text_and_saves_good_text(qtbot, engine, rules_text):
    path = rules_path(engine.home)
    save_rules(engine.home, rules_text)
    view = open_view(qtbot, engine)
    assert view.editor.toPlainText() == rules_text
    assert str(path) in view.path_label.text()

    bad = "rules:\n  - name: x\n    match: {}\n    retrain: {model: m.pt, data: d.yaml, priority: asap}\n"
    view.editor.setPlainText(bad)
    assert view.validate() is False
    assert view.problems_label.isVisible()
    assert "rule 'x'.match" in view.problems_label.text()
    assert "rule 'x'.retrain.priority" in view.problems_label.text()
    assert view.problems_label.styleSheet().startswith(f"color: {theme.URGENT_RED}")
    qtbot.mouseClick(view.save_button, Qt.LeftButton)
    assert path.read_text() == rules_text  # unchanged
    assert "not saved" in view.rules_status.text()
    assert view.editor.toPlainText() == bad  # the operator's text stays for fixing

    qtbot.mouseClick(view.reload_button, Qt.LeftButton)
    assert view.editor.toPlainText() == rules_text and not view.problems_label.isVisible()

    changed = rules_text.replace("line-3-defects", "line-3-cracks").replace('line: "3"', 'line: "4"')
    view.editor.setPlainText(changed)
    assert view.validate() is True and "valid, 1 rule(s)" in view.rules_status.text()
    assert path.read_text() == rules_text  # validating writes nothing
    qtbot.mouseClick(view.save_button, Qt.LeftButton)
    assert path.read_text() == changed
    assert "saved, 1 rule(s)" in view.rules_status.text() and not view.problems_label.isVisible()
    assert [r.name for r in parse_rules(path.read_text())] == ["line-3-cracks"]


def test_without_a_rules_file_the_editor_shows_a_commented_example_valid_once_uncommented_and_its_path_set(
        qtbot, engine, tiny_dataset):
    view = open_view(qtbot, engine)
    assert view.editor.toPlainText() == RULES_TEMPLATE
    assert "not created yet" in view.path_label.text()
    assert parse_rules(RULES_TEMPLATE) == []  # all comments: saving it as is changes nothing
    lines = RULES_TEMPLATE.splitlines()
    example = "\n".join(line[2:] for line in lines[lines.index("# rules:"):])
    with pytest.raises(SpecError) as excinfo:  # the placeholder dataset is named, not silently accepted
        parse_rules(example)
    assert [p.field for p in excinfo.value.problems] == ["rule 'line-3-defects'.retrain.data"]
    assert "file not found: /data/line3/data.yaml" in excinfo.value.problems[0].message
    example = example.replace("/data/line3/data.yaml", str(tiny_dataset))
    assert [r.name for r in parse_rules(example)] == ["line-3-defects"]


def test_token_settings_mask_the_secret_and_regenerate_revokes_the_old_one(qtbot, engine):
    first = TokenStore(engine.home).ensure_default()
    server = ApiServer(engine, "127.0.0.1", 0).start()
    engine.api = server  # as Engine.start() does; shutdown() stops it
    view = open_view(qtbot, engine)

    assert view.url_label.text() == server.url
    assert f"{server.url}/api/v1/alertmanager" in view.snippet.toPlainText()
    assert "credentials_file: /path/to/token" in view.snippet.toPlainText()
    assert "type: Bearer" in view.snippet.toPlainText()
    shown = view.token_edit.text() + view.tokens_label.text()
    assert first.secret not in shown and "•" in view.token_edit.text() and "default" in view.tokens_label.text()
    qtbot.mouseClick(view.show_button, Qt.LeftButton)
    assert view.token_edit.text() == first.secret
    qtbot.mouseClick(view.show_button, Qt.LeftButton)
    assert first.secret not in view.token_edit.text()
    assert call(f"{server.url}/api/v1/alerts", token=first.secret)[0] == 200

    new = view.regenerate(confirm=False)
    stored = [t.secret for t in TokenStore(engine.home).tokens() if t.name == "default"]
    assert stored == [new.secret] and new.secret != first.secret
    assert TokenStore(engine.home).authenticate(first.secret) is None
    assert call(f"{server.url}/api/v1/alerts", token=first.secret)[0] == 401
    assert call(f"{server.url}/api/v1/alerts", token=new.secret)[0] == 200
    assert new.secret not in view.token_edit.text() and new.secret[:4] in view.token_edit.text()
    assert "credentials_file" in view.token_status.text()

    assert view.copy_token() is True
    assert QApplication.clipboard().text() == new.secret


def test_the_api_address_says_when_the_api_is_off(qtbot, engine):
    view = open_view(qtbot, engine)  # TEST_SETTINGS turn the API off; no token file yet
    assert "off" in view.url_label.text()
    assert view.token_edit.text() == "" and not view.copy_button.isEnabled()
    assert "none yet" in view.tokens_label.text()
