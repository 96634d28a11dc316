"""Alert-triggered retrains. Fast tests drive the receiver with Alertmanager-shaped payloads on a
real store; the slow one runs the real Alertmanager (Debian's package) against the engine's API
with real training: one alert -> exactly one urgent retrain that preempts a running low job."""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import subprocess
import urllib.request

import pytest

from engine.alerts import AlertReceiver, parse_rules, save_rules
from engine.core import Engine
from engine.jobs import JobState
from engine.spec import SpecError
from engine.store import Store

from engine_runs import TEST_SETTINGS, run_events, tiny_job, wait_for
from test_api import call

RULES = """
rules:
  - name: line-3-defects
    match: {{alertname: DefectEscapeRate, line: "3"}}
    retrain:
      model: {model}
      data: {data}
      train_args: {{epochs: 1, imgsz: 64, batch: 4, workers: 0, plots: false, amp: false}}
      name: line 3 crack retrain
    cooldown_s: {cooldown}
"""


def alert(fingerprint="f1", status="firing", **labels) -> dict:
    return {"status": status, "labels": {"alertname": "DefectEscapeRate", "line": "3", **labels},
            "annotations": {"summary": "defect escape rate 28% on line 3",
                            "description": "cracks from a worn mould pass inspection"},
            "startsAt": "2026-12-03T02:10:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint}


@pytest.fixture
def engine(tmp_path):
    eng = Engine(tmp_path / "home", use_nvml=False, settings={**TEST_SETTINGS})
    yield eng
    eng.shutdown()


def test_bad_rules_name_the_rule_and_field_and_leave_the_file_alone(engine, tiny_dataset, baseline_run):
    good = RULES.format(model=baseline_run / "weights" / "best.pt", data=tiny_dataset, cooldown=0)
    save_rules(engine.home, good)
    with pytest.raises(SpecError) as excinfo:
        save_rules(engine.home, "rules:\n  - name: x\n    match: {}\n    retrain: {priority: asap}\n")
    fields = {p.field for p in excinfo.value.problems}
    assert {"rule 'x'.match", "rule 'x'.retrain", "rule 'x'.retrain.priority"} <= fields
    assert (engine.home / "alert-rules.yaml").read_text() == good
    assert [r.name for r in parse_rules(good)] == ["line-3-defects"]


def test_one_retrain_per_alert_duplicates_resolved_and_unmatched_are_recorded(engine, tiny_dataset, baseline_run):
    save_rules(engine.home, RULES.format(model=baseline_run / "weights" / "best.pt", data=tiny_dataset, cooldown=0))
    receiver = AlertReceiver(engine.ops, engine.home)
    first = receiver.receive({"alerts": [alert()]}, operator="alertmanager:default")
    assert [o.action for o in first] == ["retrain"]
    job = engine.store.job(first[0].job_id)
    assert job.priority.label == "urgent" and job.name == "line 3 crack retrain" and job.train_args["epochs"] == 1
    entry = engine.audit.entries()[-1]
    assert entry.kind == "emergency" and entry.operator == "alertmanager:default"
    assert "DefectEscapeRate" in entry.reason and "28%" in entry.reason and "fingerprint f1" in entry.reason
    assert entry.details["alert"]["fingerprint"] == "f1" and entry.details["alert"]["rule"] == "line-3-defects"

    # Re-sent (repeat_interval, group change), resolved, and an alert no rule matches.
    again = receiver.receive({"alerts": [alert(), alert("f2", alertname="Other"), alert(status="resolved")]},
                             operator="alertmanager:default")
    assert [o.action for o in again] == ["duplicate", "unmatched", "resolved"]
    assert again[0].job_id == job.id
    assert len(engine.store.jobs()) == 1

    # Once that retrain has ended, re-sends of the same occurrence still start nothing: the
    # operator's cancel stands. The alert resolving and firing anew (new startsAt) retrains again.
    engine.ops.cancel(job.id)
    later = receiver.receive({"alerts": [alert()]}, operator="x")[0]
    assert (later.action, later.job_id) == ("duplicate", job.id) and "fires anew" in later.detail
    anew = {**alert(), "startsAt": "2026-12-03T09:40:00Z"}
    assert [o.action for o in receiver.receive({"alerts": [anew]}, operator="x")] == ["retrain"]
    assert len(engine.store.jobs()) == 2


def test_cooldown_holds_back_a_second_retrain_from_the_same_rule(engine, tiny_dataset, baseline_run):
    save_rules(engine.home, RULES.format(model=baseline_run / "weights" / "best.pt", data=tiny_dataset, cooldown=600))
    receiver = AlertReceiver(engine.ops, engine.home)
    first = receiver.receive({"alerts": [alert("f1")]}, operator="x")[0]
    engine.ops.cancel(first.job_id)
    second = receiver.receive({"alerts": [alert("f9")]}, operator="x")[0]
    assert second.action == "cooldown" and "cooldown 600 s" in second.detail
    assert len(engine.store.jobs()) == 1


# ----------------------------------------------------------------------------------- real Alertmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alertmanager(tmp_path):
    """Start the real Alertmanager on loopback with a webhook to `configure(url, token)`."""
    binary = shutil.which("prometheus-alertmanager")
    if binary is None:
        pytest.skip("prometheus-alertmanager is not installed (./run-tests installs it)")
    procs = []

    def start(webhook_url: str, token: str) -> str:
        port = free_port()
        token_file = tmp_path / "am-token"
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o600)
        config = tmp_path / "alertmanager.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "route": {"receiver": "cutline", "group_by": ["alertname", "line"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "2s"},
            "receivers": [{"name": "cutline", "webhook_configs": [{
                "url": webhook_url, "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}}]}],
        }))
        log = open(tmp_path / "alertmanager.log", "ab")
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200
            except OSError:
                return False

        wait_for(ready, 20, "Alertmanager to be ready")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def post_alert(am_url: str, **labels) -> None:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat().replace("+00:00", "Z")
    body = [{"labels": {"alertname": "DefectEscapeRate", "line": "3", **labels},
             "annotations": {"summary": "defect escape rate 28% on line 3",
                             "description": "cracks from a worn mould pass inspection"},
             "startsAt": now}]
    request = urllib.request.Request(f"{am_url}/api/v2/alerts", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(request, timeout=5).status == 200


@pytest.mark.slow
def test_an_alert_through_the_real_alertmanager_starts_exactly_one_urgent_retrain(
    tmp_path, tiny_dataset, baseline_run, alertmanager
):
    engine = Engine(tmp_path / "home", use_nvml=False,
                    settings={**TEST_SETTINGS, "api_enabled": True, "api_port": 0},
                    worker_env={"CUTLINE_FAULT_BATCH_DELAY_S": "0.1"})  # the low job is still training when it fires
    try:
        save_rules(engine.home, RULES.format(model=baseline_run / "weights" / "best.pt", data=tiny_dataset,
                                             cooldown=0))
        low = engine.ops.submit(**tiny_job(tiny_dataset, "nightly experiment", "low", owner="bob"))
        engine.start()
        from engine.api.tokens import TokenStore

        token = TokenStore(engine.home).ensure_default().secret
        am_url = alertmanager(f"{engine.api.url}/api/v1/alertmanager", token)
        wait_for(lambda: (engine.store.job(low.id).batch or 0) >= 2, 120, "the low job to train")

        post_alert(am_url)
        retrains = lambda: [j for j in engine.store.jobs() if j.origin == "emergency"]  # noqa: E731
        [urgent] = wait_for(retrains, 30, "the retrain job")  # how fast: bench/bench_alerts.py
        wait_for(lambda: engine.store.job(low.id).preemptions == 1, 30, "the low job to be preempted")
        wait_for(lambda: run_events(engine.store.job(urgent.id).run_dir, "batch"), 60, "the retrain's first batch")

        # Alertmanager re-sends (repeat_interval 2 s) and we post it again: still one retrain.
        post_alert(am_url)
        wait_for(lambda: sum(1 for e in _events(engine) if e["action"] == "duplicate") >= 2, 30, "re-deliveries")
        assert len(retrains()) == 1
        entry = next(e for e in engine.audit.entries() if e.kind == "emergency")
        assert entry.operator == "alertmanager:default" and entry.job_id == str(urgent.id)
        assert "DefectEscapeRate" in entry.reason and "28% on line 3" in entry.reason
        assert entry.details["alert"]["fingerprint"] in entry.reason
        assert urgent.priority.label == "urgent"

        status, body = call(f"{engine.api.url}/api/v1/alerts", token=token)
        assert status == 200 and body["alerts"][-1]["action"] == "retrain"
    finally:
        engine.shutdown(mode="checkpoint", timeout=60)
    assert Store(tmp_path / "home").job(low.id).state in (JobState.QUEUED, JobState.FINISHED)


def _events(engine) -> list[dict]:
    from engine.alerts import alert_events

    return alert_events(engine.store)


def test_wrongly_typed_rule_fields_are_refused_when_saved(engine):
    with pytest.raises(SpecError) as excinfo:
        save_rules(engine.home, "rules:\n  - name: r\n    match: {alertname: X}\n"
                                "    retrain: {model: /m.pt, data: /d.yaml, owner: 5, train_args: 5, from_job: yes}\n")
    fields = {p.field for p in excinfo.value.problems}
    assert {"rule 'r'.retrain.owner", "rule 'r'.retrain.train_args", "rule 'r'.retrain.from_job"} <= fields
    assert not (engine.home / "alert-rules.yaml").exists()


def test_alerts_that_differ_only_in_an_unmatched_label_share_one_retrain(engine, tiny_dataset, baseline_run):
    """Two instances of the same line alarm at once: one retrain, not two urgent ones preempting twice."""
    save_rules(engine.home, RULES.format(model=baseline_run / "weights" / "best.pt", data=tiny_dataset, cooldown=0))
    receiver = AlertReceiver(engine.ops, engine.home)
    outcomes = receiver.receive({"alerts": [alert("f1", instance="cam-1"), alert("f2", instance="cam-2")]},
                                operator="x")
    assert [o.action for o in outcomes] == ["retrain", "duplicate"]
    assert outcomes[1].job_id == outcomes[0].job_id and "from another DefectEscapeRate alert" in outcomes[1].detail
    assert len(engine.store.jobs()) == 1
    engine.ops.cancel(outcomes[0].job_id)  # once it has ended, the other alert may retrain
    assert receiver.receive({"alerts": [alert("f2", instance="cam-2")]}, operator="x")[0].action == "retrain"


def test_an_unreadable_rules_file_still_records_every_alert(engine):
    (engine.home / "alert-rules.yaml").write_bytes("# Prüfung der Linie 3\nrules: []\n".encode("latin-1"))
    outcomes = AlertReceiver(engine.ops, engine.home).receive({"alerts": [alert()]}, operator="x")
    assert [o.action for o in outcomes] == ["error"] and "cannot be read" in outcomes[0].detail
    assert [e["action"] for e in _events(engine)] == ["error"]
    assert engine.store.jobs() == []


def test_a_long_alert_name_still_retrains_under_a_shortened_job_name(engine, tiny_dataset, baseline_run):
    rules = RULES.format(model=baseline_run / "weights" / "best.pt", data=tiny_dataset, cooldown=0)
    save_rules(engine.home, rules.replace("      name: line 3 crack retrain\n", "").replace(
        "alertname: DefectEscapeRate", "line: \"3\""))
    long = alert(alertname="DefectEscapeRate" + "X" * 110)
    outcome = AlertReceiver(engine.ops, engine.home).receive({"alerts": [long]}, operator="x")[0]
    assert outcome.action == "retrain", outcome.detail
    assert len(engine.store.job(outcome.job_id).name) <= 120


def test_a_retrain_that_fails_while_being_queued_leaves_no_job_and_no_audit_entry(engine, tiny_dataset,
                                                                                 baseline_run, monkeypatch):
    save_rules(engine.home, RULES.format(model=baseline_run / "weights" / "best.pt", data=tiny_dataset, cooldown=0))
    entries = len(engine.audit.entries())

    def broken_append(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(engine.ops.audit, "append", broken_append)  # fails after the job row is written
    outcome = AlertReceiver(engine.ops, engine.home).receive({"alerts": [alert()]}, operator="x")[0]
    assert outcome.action == "error" and "disk full" in outcome.detail and outcome.job_id is None
    assert engine.store.jobs() == [], "the job row was rolled back with the failed audit entry"
    monkeypatch.undo()
    assert len(engine.audit.entries()) == entries and engine.audit.verify().ok
    assert [e["action"] for e in _events(engine)] == ["error"]


def test_rules_match_only_labels_the_alert_has_and_check_values_when_saved(engine, tiny_dataset):
    rule = parse_rules(f"rules:\n  - name: r\n    match: {{alertname: X, line: 'None'}}\n"
                       f"    retrain: {{model: yolov8n.yaml, data: {tiny_dataset}}}\n")[0]
    assert not rule.matches({"alertname": "X"}), "a missing label is not the text 'None'"
    assert rule.matches({"alertname": "X", "line": "None"})
    with pytest.raises(SpecError) as excinfo:
        parse_rules(f"rules:\n  - name: r\n    match: {{alertname: X, critical: true}}\n"
                    f"    retrain: {{model: /nowhere/best.pt, data: {tiny_dataset}, train_args: {{lr0: .nan}}}}\n")
    messages = {p.field: p.message for p in excinfo.value.problems}
    assert "in quotes" in messages["rule 'r'.match.critical"]
    assert "file not found" in messages["rule 'r'.retrain.model"]
    assert "finite number" in messages["rule 'r'.retrain.train_args.lr0"]
