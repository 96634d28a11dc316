"""The command line as an operator uses it: `python main.py <command>` in a real subprocess, on a
real SQLite store under a temporary home. No training runs here (one test starts a headless engine
on an empty queue)."""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zoneinfo
from pathlib import Path

import pytest

from engine.core import engine_running

from engine_runs import zip_weights

REPO = Path(__file__).resolve().parents[1]


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUTLINE_CPU_SLOTS", "PYTHONPATH")}
    env.update(CUTLINE_HOME=str(home), PYTHONPATH=str(REPO))
    return env


def cli(home: Path, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    """Run one command on `home` (CPU slots only, so devices are the same on every machine)."""
    proc = subprocess.run([sys.executable, "main.py", *args, "--no-nvml"], cwd=REPO, env=cli_env(home),
                          capture_output=True, text=True, timeout=60)
    if expect is not None:
        assert proc.returncode == expect, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def cli_json(home: Path, *args: str, expect: int | None = 0) -> dict:
    proc = cli(home, *args, "--json", expect=expect)
    return json.loads(proc.stdout)


def queue(home: Path, *args: str) -> list[dict]:
    return cli_json(home, "list", *args)["jobs"]


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def submit(home, tiny_dataset):
    def submit(name: str, *args: str) -> dict:
        doc = cli_json(home, "submit", "--name", name, "--data", str(tiny_dataset), "--model", "yolov8n.yaml",
                       "--epochs", "1", *args)
        return doc["job"]

    return submit


# ---------------------------------------------------------------------- refused submissions

BAD_SUBMISSIONS = {
    "missing data.yaml": (["--data", "{missing}"], "data", "data.yaml not found"),
    "bare .pt name": (["--model", "yolov8n.pt"], "model", "never downloads weights"),
    "unknown argument": (["--arg", "lr00=0.01"], "lr00", "did you mean 'lr0'"),
    "managed argument": (["--arg", "device=0"], "device", "Cutline assigns the device"),
    "bad epochs": (["--epochs", "0"], "epochs", "must be an integer >= 1, got 0"),
    "no gpu": (["--device", "gpu"], "device", "no GPU device on this machine"),
    "urgent without reason": (["--priority", "urgent"], "reason", "give the reason"),
    "empty name": (["--name", ""], "name", "a job needs a name"),
    "model kind": (["--model", "resnet.onnx"], "model", ".pt weights file or a .yaml"),
    "torn weights": (["--model", "{torn}"], "model", "not a complete PyTorch checkpoint"),
    "small image size": (["--imgsz", "8"], "imgsz", "at least 32 pixels"),
    "bad batch": (["--batch", "0"], "batch", "batch size >= 1"),
    "unknown device kind": (["--device", "tpu"], "device", "expected any, gpu or cpu"),
    "not a finite number": (["--arg", "lr0=.nan"], "lr0", "finite number"),
    "wrong type": (["--arg", "momentum=abc"], "momentum", "between 0 and 1"),
    "unknown optimizer": (["--arg", "optimizer=Adamm"], "optimizer", "unknown optimizer 'Adamm'"),
    "invalid data.yaml": (["--data", "{bad_yaml}"], "data", "is not valid YAML"),
    "bad label": (["--data", "{bad_labels}"], "data", "class 7 is out of range"),
}


def bad_inputs(tmp_path: Path, tiny_dataset: Path) -> dict[str, Path]:
    """Files for the refused submissions: a torn checkpoint, broken YAML, a dataset with a bad label."""
    import shutil

    torn = tmp_path / "torn.pt"
    torn.write_bytes(zip_weights(tmp_path / "whole.pt").read_bytes()[:-30])
    bad_yaml = tmp_path / "bad" / "data.yaml"
    bad_yaml.parent.mkdir()
    bad_yaml.write_text("path: .\ntrain: [images\n")
    labels = tmp_path / "labels-ds"
    shutil.copytree(tiny_dataset.parent, labels)
    label = sorted((labels / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "7 0.5 0.5 0.2 0.2\n")
    data = labels / "data.yaml"
    data.write_text(data.read_text().replace(str(tiny_dataset.parent), str(labels)))
    return {"torn": torn, "bad_yaml": bad_yaml, "bad_labels": data}


@pytest.mark.parametrize("case", list(BAD_SUBMISSIONS))
def test_bad_submission_is_refused_with_its_field_and_nothing_is_queued(case, home, tiny_dataset, tmp_path):
    extra, field, message = BAD_SUBMISSIONS[case]
    files = bad_inputs(tmp_path, tiny_dataset) if any("{" in e and "missing" not in e for e in extra) else {}
    extra = [e.format(missing=tmp_path / "nowhere" / "data.yaml", **files) for e in extra]
    base = {"--name": "good name", "--data": str(tiny_dataset), "--model": "yolov8n.yaml"}
    for flag in extra[::2]:
        base.pop(flag, None)
    args = [x for kv in base.items() for x in kv] + extra
    proc = cli(home, "submit", *args, "--json", expect=2)

    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert any(line.startswith(f"error: {field}: ") and message in line for line in lines), proc.stderr
    assert len(lines) == 1, f"only the one problem should be reported: {proc.stderr}"
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert [e["field"] for e in doc["errors"]] == [field]
    assert message in doc["errors"][0]["message"]
    assert queue(home, "--all") == []


def test_every_problem_of_a_submission_is_reported_at_once(home, tmp_path):
    proc = cli(home, "submit", "--name", "", "--data", str(tmp_path / "x.yaml"), "--model", "yolov8n.pt",
               "--epochs", "three", expect=2)
    fields = [line.split(":")[1].strip() for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(fields) == ["data", "epochs", "model", "name"], proc.stderr
    assert "got 'three'" in proc.stderr


# ---------------------------------------------------------------------- order


def test_list_is_in_priority_then_submission_order_with_waiting_reasons(home, submit):
    low = submit("low one", "--priority", "low", "--owner", "bob")
    n1 = submit("normal one")
    high = submit("high one", "--priority", "high")
    n2 = submit("normal two", "--device", "cpu")
    urgent = submit("urgent one", "--priority", "urgent", "--reason", "line 3 escapes", "--operator", "carol")

    jobs = queue(home)
    assert [j["id"] for j in jobs] == [urgent["id"], high["id"], n1["id"], n2["id"], low["id"]]
    assert [j["position"] for j in jobs] == [1, 2, 3, 4, 5]
    assert all(j["state"] == "queued" for j in jobs)
    assert "would start" in jobs[0]["note"] and "cpu0" in jobs[0]["note"]
    assert jobs[0]["waiting"] is None  # it is the one the policy would start
    assert jobs[4]["waiting"].startswith("waiting: cpu0 busy") and "4th in line" in jobs[4]["waiting"]
    assert jobs[4]["owner"] == "bob" and jobs[3]["device_kind"] == "cpu"

    shown = cli(home, "list", "--owner", "bob").stdout.splitlines()
    assert shown[0].split()[:6] == ["#", "ID", "NAME", "OWNER", "PRIORITY", "STATE"]
    assert len(shown) == 2 and "low one" in shown[1] and "4th in line" in shown[1]

    urgent_audit = cli_json(home, "audit", "--job", str(urgent["id"]))["entries"]
    assert [(e["kind"], e["operator"], e["reason"]) for e in urgent_audit] == [("jump", "carol", "line 3 escapes")]


def test_move_down_yields_move_up_needs_a_reason_and_is_audited(home, submit):
    a, b, c = (submit(name)["id"] for name in ("a", "b", "c"))

    down = cli(home, "move", str(a), "--after", str(c))
    assert "moved down" in down.stdout and "no engine running" in down.stdout
    assert [j["id"] for j in queue(home)] == [b, c, a]

    refused = cli(home, "move", str(a), "--before", str(b), "--json", expect=2)
    assert "error: this puts the job ahead of earlier work: give the reason" in refused.stderr
    assert json.loads(refused.stdout)["errors"][0]["field"] == "reason"
    assert [j["id"] for j in queue(home)] == [b, c, a]

    up = cli_json(home, "move", str(a), "--before", str(b), "--reason", "customer audit tomorrow",
                  "--operator", "dana")
    assert up["result"] == "jump" and up["passed"] == [b, c] and up["engine_running"] is None
    assert [j["id"] for j in queue(home)] == [a, b, c]

    entries = cli_json(home, "audit", "--job", str(a))["entries"]
    assert [e["kind"] for e in entries] == ["submit", "yield", "jump"]
    jump = entries[-1]
    assert (jump["operator"], jump["reason"]) == ("dana", "customer audit tomorrow")
    assert jump["details"]["passed"] == [b, c] and jump["details"]["to_position"] == 1


def test_raising_a_priority_needs_a_reason_lowering_does_not(home, submit):
    a, b = submit("a")["id"], submit("b")["id"]

    refused = cli(home, "priority", str(b), "high", expect=2)
    assert "give the reason" in refused.stderr
    bad_level = cli(home, "priority", str(b), "highest", expect=2)
    assert "unknown priority 'highest'" in bad_level.stderr
    assert [(j["id"], j["priority"]) for j in queue(home)] == [(a, "normal"), (b, "normal")]

    cli(home, "priority", str(b), "high", "--reason", "needed for the 06:00 shift")
    cli(home, "priority", str(a), "low")
    assert [(j["id"], j["priority"]) for j in queue(home)] == [(b, "high"), (a, "low")]
    kinds = [(e["job_id"], e["kind"]) for e in cli_json(home, "audit", "--kind", "priority,yield")["entries"]]
    assert kinds == [(str(b), "priority"), (str(a), "yield")]


# ---------------------------------------------------------------------- hold, stop


def test_pause_resume_cancel_of_queued_jobs(home, submit):
    a, b = submit("a")["id"], submit("b")["id"]

    paused = cli(home, "pause", str(a), "--reason", "dataset being relabelled")
    assert f"job {a} (a): queued -> paused" in paused.stdout
    assert [(j["id"], j["state"]) for j in queue(home)] == [(a, "paused"), (b, "queued")]
    assert "is already paused" in cli(home, "pause", str(a)).stdout
    assert "not paused" in cli(home, "resume", str(b), expect=2).stderr
    assert "did you mean 'paused'" in cli(home, "list", "--state", "pased", expect=2).stderr

    cli(home, "resume", str(a))
    cli(home, "cancel", str(b))
    assert [(j["id"], j["state"]) for j in queue(home)] == [(a, "queued")]
    assert [(j["id"], j["state"]) for j in queue(home, "--all")] == [(a, "queued"), (b, "cancelled")]
    assert "nothing to cancel" in cli(home, "cancel", str(b), expect=2).stderr
    assert "no job 99" in cli(home, "pause", "99", expect=2).stderr

    shown = cli_json(home, "show", str(a))
    assert [(t["from_state"], t["to_state"]) for t in shown["transitions"]] == [("queued", "paused"), ("paused", "queued")]
    assert [e["kind"] for e in shown["audit"]] == ["submit", "pause", "resume"]
    assert shown["audit"][1]["reason"] == "dataset being relabelled"
    text = cli(home, "show", str(a)).stdout
    assert "transitions (2):" in text and "dataset being relabelled" in text


def test_emergency_from_a_model_file_goes_first(home, submit, tiny_dataset, tmp_path):
    first = submit("nightly", "--priority", "high")["id"]
    weights = zip_weights(tmp_path / "line3-best.pt")

    no_reason = cli(home, "emergency", "--model", str(weights), "--data", str(tiny_dataset), expect=2)
    assert "error: reason: " in no_reason.stderr
    no_weights = cli(home, "emergency", "--from-job", str(first), "--reason", "r", expect=2)
    assert "error: model: " in no_weights.stderr and "no trained weights yet" in no_weights.stderr

    doc = cli_json(home, "emergency", "--model", str(weights), "--data", str(tiny_dataset), "--epochs", "2",
                   "--name", "line 3 crack retrain", "--reason", "crack escapes on line 3, ticket 4411")
    job = doc["job"]
    assert (job["priority"], job["origin"], job["train_args"]) == ("urgent", "emergency", {"epochs": 2})
    assert Path(job["model"]).read_bytes() == weights.read_bytes()  # a frozen copy
    assert doc["audit"]["details"]["weights_from"] == str(weights)
    assert doc["audit"]["kind"] == "emergency" and doc["audit"]["reason"] == "crack escapes on line 3, ticket 4411"
    assert [j["id"] for j in queue(home)] == [job["id"], first]


# ---------------------------------------------------------------------- audit


def test_audit_verify_export_and_tampering(home, submit, tmp_path):
    a = submit("a")["id"]
    cli(home, "jump", str(a), "--reason", "first for the demo")

    ok = cli(home, "audit", "verify")
    assert "audit trail intact (2 entries checked)" in ok.stdout
    out = tmp_path / "audit.csv"
    cli(home, "audit", "export", str(out))
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["seq"], r["kind"], r["reason"]) for r in rows] == [("1", "submit", "submitted by " + rows[0]["operator"]),
                                                                   ("2", "jump", "first for the demo")]

    with sqlite3.connect(home / "cutline.db") as conn:
        conn.execute("UPDATE audit SET reason = 'nothing to see' WHERE seq = 2")
    damaged = cli(home, "audit", "verify", expect=1)
    assert "DAMAGED" in damaged.stdout and "entry 2: contents changed after it was written" in damaged.stdout
    doc = cli_json(home, "audit", "verify", expect=1)
    assert doc["ok"] is False and doc["intact"] is False and doc["checked"] == 2
    assert any("entry 2" in e["message"] for e in doc["errors"])


# ---------------------------------------------------------------------- settings, schedules, devices


def test_settings_set_validates_everything_before_changing_anything(home):
    refused = cli(home, "settings", "set", "warm_standby=false", "daily_preemption_cap=-1", "--json", expect=2)
    assert "error: daily_preemption_cap: must be a whole number from 0 to 1000, got -1" in refused.stderr
    assert json.loads(refused.stdout)["errors"][0]["field"] == "daily_preemption_cap"
    assert "error: daily_preemption_capp: unknown setting (did you mean 'daily_preemption_cap'?)" in cli(
        home, "settings", "set", "daily_preemption_capp=2", expect=2).stderr
    before = cli_json(home, "settings")
    assert before["settings"]["warm_standby"] is True and before["settings"]["daily_preemption_cap"] == 3
    assert before["set"] == []

    changed = cli(home, "settings", "set", "daily_preemption_cap=1", "reserved_device=cpu0", "--reason", "pilot")
    assert "daily_preemption_cap: 3 -> 1" in changed.stdout
    after = cli_json(home, "settings")
    assert (after["settings"]["daily_preemption_cap"], after["settings"]["reserved_device"]) == (1, "cpu0")
    [entry] = cli_json(home, "audit", "--kind", "settings")["entries"]
    assert entry["reason"] == "pilot" and entry["details"]["changed"]["daily_preemption_cap"] == {"from": 3, "to": 1}


def test_schedule_add_checks_the_cron_line_and_lists_the_next_run(home, tiny_dataset):
    bad = cli(home, "schedule", "add", "--name", "nightly", "--cron", "0 25 * * *", "--data", str(tiny_dataset),
              "--model", "yolov8n.yaml", "--json", expect=2)
    assert "error: cron: not a valid crontab line '0 25 * * *'" in bad.stderr
    assert json.loads(bad.stdout)["errors"][0]["field"] == "cron"
    assert cli_json(home, "schedule", "list")["schedules"] == []

    cli(home, "schedule", "add", "--name", "nightly", "--cron", "0 2 * * *", "--data", str(tiny_dataset),
        "--model", "yolov8n.yaml", "--epochs", "5", "--priority", "low", "--owner", "bob")
    [schedule] = cli_json(home, "schedule", "list")["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["template"]["train_args"] == {"epochs": 5}
    fire = dt.datetime.fromtimestamp(schedule["next_fire"], zoneinfo.ZoneInfo(schedule["timezone"]))
    assert (fire.hour, fire.minute) == (2, 0) and 0 < schedule["next_fire"] - time.time() <= 86400 + 3600
    listed = cli(home, "schedule", "list").stdout
    assert "nightly" in listed and "0 2 * * *" in listed and dt.datetime.fromtimestamp(
        schedule["next_fire"]).strftime("%Y-%m-%d %H:%M:%S") in listed

    cli(home, "schedule", "remove", str(schedule["id"]))
    assert cli_json(home, "schedule", "list")["schedules"] == []
    assert [e["reason"] for e in cli_json(home, "audit", "--kind", "schedule")["entries"]] == [
        "added schedule nightly", "removed schedule nightly"]


def test_devices_lists_each_cpu_slot_with_a_sample(home):
    doc = cli_json(home, "devices", "--cpu-slots", "2")
    assert [(d["id"], d["kind"]) for d in doc["devices"]] == [("cpu0", "cpu"), ("cpu1", "cpu")]
    assert "NVML disabled" in doc["backend_note"]
    assert all(d["sample"]["memory_total"] > 0 for d in doc["devices"])


# ---------------------------------------------------------------------- headless engine


def test_headless_engine_is_seen_by_other_commands_and_stops_on_sigterm(home):
    cli(home, "settings", "set", "warm_standby=false")
    proc = subprocess.Popen([sys.executable, "main.py", "headless", "--no-nvml"], cwd=REPO, env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while engine_running(home) != proc.pid:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the headless engine did not take the home's lock"
            time.sleep(0.1)
        assert cli_json(home, "list")["engine_running"] == proc.pid
        busy = cli(home, "headless", expect=1)
        assert f"another Cutline engine (pid {proc.pid}) already runs" in busy.stderr
        changed = cli(home, "settings", "set", "min_runtime_s=60")
        assert f"engine (pid {proc.pid}) running: takes effect within a second" in changed.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"engine running (pid {proc.pid})" in out and "nothing to recover" in out
    assert engine_running(home) is None


def test_api_tokens_and_alert_rules_from_the_command_line(home, tmp_path):
    from engine.api.tokens import TokenStore

    assert "no tokens" in cli(home, "token").stdout
    first = cli(home, "token", "regenerate").stdout.strip()
    assert TokenStore(home).authenticate(first) == "default"
    assert cli(home, "token", "show").stdout.strip() == first
    second = cli(home, "token", "regenerate", "default").stdout.strip()
    assert second != first and TokenStore(home).authenticate(first) is None
    assert "error: no token named 'ci'" in cli(home, "token", "show", "ci", expect=2).stderr
    assert "revoked" in cli(home, "token", "revoke", "default").stdout

    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: r\n    match: {alertname: X}\n    retrain: {priority: urgent}\n")
    refused = cli(home, "rules", "install", str(bad), expect=2)
    assert "error: rule 'r'.retrain: give from_job (a job id) or model (a weights file)" in refused.stderr
    assert "no rules file yet" in cli(home, "rules").stdout
    assert cli_json(home, "alerts")["alerts"] == []
