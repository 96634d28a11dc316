"""Alert-triggered retrains: operator rules map Alertmanager alerts to emergency retrains.

Rules live in `<home>/alert-rules.yaml` (edited in the console or by hand; re-read for every
delivery, so a change needs no restart):

    rules:
      - name: line-3-defects
        match: {alertname: DefectEscapeRate, line: "3"}     # every label must equal (all given)
        retrain:
          from_job: 12            # start from this job's trained weights ... or model: /path/best.pt
          data: /data/line3/data.yaml   # default: the job's own dataset
          train_args: {epochs: 30}
          priority: urgent        # urgent (default) preempts; high/normal/low just queue
        cooldown_s: 3600          # no second retrain from this rule within an hour

What happens to each alert of a delivery is recorded (table `alert_events`) and visible in the
console and through the API: `retrain` (job N), `duplicate` (a retrain for the same alert
fingerprint is still queued or running, or this occurrence of the alert -- same fingerprint and
startsAt -- already caused one, however it ended: Alertmanager re-sends on repeat_interval and
whenever its group changes; or the rule's retrain for another alert -- one differing only in a
label the rule does not match on, such as instance -- is still queued or running), `cooldown`, `unmatched`, `resolved` (recorded, never acted on), or
`error`.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .jobs import JobState, Priority
from .spec import Problem, SpecError, check_train_args, expand_path

RULES_FILE = "alert-rules.yaml"
ACTIVE_OR_WAITING = tuple(s.value for s in JobState if not s.is_terminal)
RETRAIN_KEYS = {"from_job", "model", "data", "train_args", "priority", "name", "owner", "device_kind"}


@dataclass(frozen=True)
class Rule:
    name: str
    match: dict[str, str]
    retrain: dict[str, Any]
    cooldown_s: float = 0.0

    def matches(self, labels: dict[str, str]) -> bool:
        return all(k in labels and labels[k] == v for k, v in self.match.items())


@dataclass
class AlertOutcome:
    fingerprint: str
    status: str
    alertname: str
    action: str
    detail: str
    rule: str | None = None
    job_id: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "status": self.status, "alertname": self.alertname,
                "action": self.action, "detail": self.detail, "rule": self.rule, "job_id": self.job_id}


def rules_path(home: str | Path) -> Path:
    return Path(home) / RULES_FILE


def parse_rules(text: str) -> list[Rule]:
    """Rules from YAML text; SpecError names the rule and field of every problem."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise SpecError([Problem("rules", f"not valid YAML: {e}")]) from None
    raw = raw or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("rules", []), list):
        raise SpecError([Problem("rules", "expected 'rules:' followed by a list of rules")])
    problems: list[Problem] = []
    rules: list[Rule] = []
    names: set[str] = set()
    for i, item in enumerate(raw.get("rules") or []):
        where = f"rules[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(where, "each rule is a mapping with name, match and retrain"))
            continue
        name = str(item.get("name") or "").strip()
        where = f"rule {name!r}" if name else where
        if not name:
            problems.append(Problem(where, "a rule needs a name"))
        elif name in names:
            problems.append(Problem(where, "two rules have this name"))
        names.add(name)
        match = item.get("match")
        if not isinstance(match, dict) or not match:
            problems.append(Problem(f"{where}.match", "give at least one label, e.g. {alertname: DefectEscapeRate}"))
            match = {}
        for label, value in match.items():
            # Label values are text; YAML reads true, 1.10 or null as something else, which never matches.
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                problems.append(Problem(f"{where}.match.{label}", f"write the label value in quotes "
                                                                  f"(e.g. {label}: \"{value}\"); got {value!r}"))
        retrain = item.get("retrain")
        if not isinstance(retrain, dict):
            problems.append(Problem(f"{where}.retrain", "give the retrain: from_job or model, and data"))
            retrain = {}
        unknown = set(retrain) - RETRAIN_KEYS
        if unknown:
            problems.append(Problem(f"{where}.retrain", f"unknown fields: {', '.join(sorted(unknown))}"))
        if retrain and "from_job" not in retrain and "model" not in retrain:
            problems.append(Problem(f"{where}.retrain", "give from_job (a job id) or model (a weights file)"))
        if retrain and "from_job" not in retrain and "data" not in retrain:
            problems.append(Problem(f"{where}.retrain", "give data (a data.yaml) when there is no from_job"))
        try:
            Priority.parse(retrain.get("priority", "urgent"))
        except ValueError as e:
            problems.append(Problem(f"{where}.retrain.priority", str(e)))
        types = {"from_job": int, "model": str, "data": str, "train_args": dict, "name": str, "owner": str,
                 "device_kind": str}
        for key, kind in types.items():
            if key in retrain and (isinstance(retrain[key], bool) or not isinstance(retrain[key], kind)):
                what = {int: "a job id", str: "text", dict: "a mapping of Ultralytics arguments"}[kind]
                problems.append(Problem(f"{where}.retrain.{key}", f"must be {what}"))
        if isinstance(retrain.get("train_args"), dict):
            problems += [Problem(f"{where}.retrain.train_args.{p.field}", p.message)
                         for p in check_train_args(retrain["train_args"])]
        for key in ("model", "data"):  # found now, not at 02:10 when the alert fires
            value = retrain.get(key)
            if isinstance(value, str) and value.strip() and not (value.endswith((".yaml", ".yml")) and key == "model") \
                    and not expand_path(value).is_file():
                problems.append(Problem(f"{where}.retrain.{key}", f"file not found: {value}"))
        cooldown = item.get("cooldown_s", 0)
        if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or not 0 <= cooldown <= 30 * 86400:
            problems.append(Problem(f"{where}.cooldown_s", "seconds from 0 to 30 days"))
            cooldown = 0
        rules.append(Rule(name, {str(k): str(v) for k, v in match.items()}, dict(retrain), float(cooldown)))
    if problems:
        raise SpecError(problems)
    return rules


def load_rules(home: str | Path) -> list[Rule]:
    path = rules_path(home)
    return parse_rules(path.read_text(encoding="utf-8")) if path.exists() else []


def save_rules(home: str | Path, text: str) -> list[Rule]:
    """Validate, then write atomically. Bad text raises SpecError and the file stays as it was."""
    rules = parse_rules(text)
    path = rules_path(home)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return rules


def alert_reason(alert: dict) -> str:
    """The audit reason for a retrain an alert caused: what fired, what it says, where, which alert."""
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    parts = [f"alert {labels.get('alertname', '?')} firing"]
    if annotations.get("summary"):
        parts.append(str(annotations["summary"]))
    if annotations.get("description"):
        parts.append(str(annotations["description"]))
    label_text = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
    if label_text:
        parts.append(f"labels {label_text}")
    parts.append(f"since {alert.get('startsAt', '?')}")
    parts.append(f"fingerprint {alert.get('fingerprint', '?')}")
    return "; ".join(parts)[:2000]


class AlertReceiver:
    """Turns one Alertmanager delivery into recorded outcomes and, for matching firing alerts,
    emergency retrains. One delivery at a time (Alertmanager may deliver two groups at once)."""

    def __init__(self, ops, home: str | Path) -> None:
        self.ops = ops
        self.store = ops.store
        self.home = Path(home)
        self._lock = threading.Lock()

    def receive(self, payload: dict, operator: str) -> list[AlertOutcome]:
        with self._lock:
            try:
                rules = load_rules(self.home)
                rules_error = None
            except SpecError as e:
                rules, rules_error = [], f"alert rules file is invalid: {e}"
            except (OSError, UnicodeDecodeError) as e:  # unreadable: every alert is still recorded
                rules, rules_error = [], f"alert rules file cannot be read: {e}"
            return [self._one(alert, rules, rules_error, operator) for alert in payload.get("alerts") or []]

    def _one(self, alert: dict, rules: list[Rule], rules_error: str | None, operator: str) -> AlertOutcome:
        labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
        fingerprint = str(alert.get("fingerprint") or "")
        status = str(alert.get("status") or "firing")
        outcome = AlertOutcome(fingerprint, status, labels.get("alertname", "?"), "unmatched", "")
        rule = next((r for r in rules if r.matches(labels)), None)
        outcome.rule = rule.name if rule else None
        prepared = None
        if status == "resolved":
            outcome.action, outcome.detail = "resolved", "resolved alerts are recorded, not acted on"
        elif rules_error:
            outcome.action, outcome.detail = "error", rules_error
        elif rule is None:
            outcome.detail = "no rule matches its labels"
        elif not self._held_back(alert, rule, outcome):
            # Checked (the whole dataset is read) before the database is held; deliveries are serialised
            # by self._lock, so nothing can queue a retrain for this alert in between.
            prepared = self._prepare(alert, rule, outcome, operator)
        if prepared is not None:
            try:
                # The retrain and the record of why it exists commit together: a crash between them
                # could otherwise let a re-sent alert start a second retrain.
                with self.store.transaction():
                    job = self.ops.enqueue(prepared)
                    outcome.action, outcome.job_id = "retrain", job.id
                    outcome.detail = f"submitted {job.priority.label} retrain job {job.id}"
                    self._record(alert, outcome, operator)
            except Exception as e:  # rolled back whole; the alert is still recorded
                outcome.action, outcome.job_id = "error", None
                outcome.detail = f"the retrain could not be queued: {e}"
                self._record(alert, outcome, operator)
        else:
            self._record(alert, outcome, operator)
        self.ops.committed()
        return outcome

    def _held_back(self, alert: dict, rule: Rule, outcome: AlertOutcome) -> bool:
        """True (with the outcome filled in) when this alert must not start a retrain: one for it, or
        for another alert of the same rule, is still queued or running; this occurrence already caused
        one; or the rule's cooldown runs."""
        starts_at = alert.get("startsAt")
        states = ", ".join("?" * len(ACTIVE_OR_WAITING))
        with self.store.lock:
            # Alertmanager re-sends a firing alert (repeat_interval, group changes) with the same
            # fingerprint and startsAt: one occurrence gets one retrain, however that retrain ended.
            # A new occurrence (it resolved and fired again) has a new startsAt.
            same_occurrence = None if not starts_at else self.store.conn.execute(
                "SELECT e.job_id, j.state FROM alert_events e LEFT JOIN jobs j ON j.id = e.job_id "
                "WHERE e.fingerprint = ? AND e.starts_at = ? AND e.action = 'retrain' ORDER BY e.seq DESC LIMIT 1",
                (outcome.fingerprint, starts_at)).fetchone()
            running = self.store.conn.execute(
                f"SELECT e.job_id, j.state FROM alert_events e JOIN jobs j ON j.id = e.job_id "
                f"WHERE e.fingerprint = ? AND e.action = 'retrain' AND j.state IN ({states}) "
                f"ORDER BY e.seq DESC LIMIT 1", (outcome.fingerprint, *ACTIVE_OR_WAITING)).fetchone()
            # Alerts that differ only in a label the rule does not match on (instance, pod) have other
            # fingerprints but ask for the very same retrain: one at a time per rule.
            same_rule = self.store.conn.execute(
                f"SELECT e.job_id, j.state, e.alertname FROM alert_events e JOIN jobs j ON j.id = e.job_id "
                f"WHERE e.rule = ? AND e.action = 'retrain' AND j.state IN ({states}) "
                f"ORDER BY e.seq DESC LIMIT 1", (rule.name, *ACTIVE_OR_WAITING)).fetchone()
            last = self.store.conn.execute(
                "SELECT ts, job_id FROM alert_events WHERE rule = ? AND action = 'retrain' ORDER BY seq DESC LIMIT 1",
                (rule.name,)).fetchone()
        if running is not None:
            outcome.action, outcome.job_id = "duplicate", int(running[0])
            outcome.detail = f"job {running[0]} for this alert is still {running[1]}"
        elif same_occurrence is not None:
            outcome.action, outcome.job_id = "duplicate", int(same_occurrence[0])
            outcome.detail = (f"this alert, firing since {starts_at}, already caused job {same_occurrence[0]} "
                              f"(now {same_occurrence[1] or 'gone'}); it retrains again only when it fires anew")
        elif same_rule is not None:
            outcome.action, outcome.job_id = "duplicate", int(same_rule[0])
            outcome.detail = (f"rule {rule.name}'s retrain job {same_rule[0]} (from another {same_rule[2]} alert) "
                              f"is still {same_rule[1]}")
        elif last is not None and rule.cooldown_s and time.time() - last[0] < rule.cooldown_s:
            outcome.action, outcome.job_id = "cooldown", int(last[1]) if last[1] is not None else None
            outcome.detail = (f"rule {rule.name} started job {last[1]} {time.time() - last[0]:.0f} s ago "
                              f"(cooldown {rule.cooldown_s:.0f} s)")
        else:
            return False
        return True

    def _prepare(self, alert: dict, rule: Rule, outcome: AlertOutcome, operator: str):
        """The checked retrain for this alert, or None with the outcome saying why not."""
        r = rule.retrain
        name = r.get("name") or f"{outcome.alertname[:80]} retrain ({rule.name[:30]})"
        try:
            return self.ops.prepare_emergency(
                reason=alert_reason(alert), operator=operator, from_job=r.get("from_job"), model=r.get("model"),
                data=r.get("data"), name=name, train_args=r.get("train_args"), owner=r.get("owner"),
                device_kind=r.get("device_kind"), priority=r.get("priority", "urgent"),
                audit_details={"alert": {"fingerprint": outcome.fingerprint, "alertname": outcome.alertname,
                                         "labels": alert.get("labels") or {}, "rule": rule.name,
                                         "startsAt": alert.get("startsAt")}},
            )
        except Exception as e:  # one bad rule must not lose the rest of the delivery
            outcome.action, outcome.detail = "error", f"the retrain could not be submitted: {e}"
            return None

    def _record(self, alert: dict, outcome: AlertOutcome, operator: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO alert_events (ts, fingerprint, status, alertname, labels, annotations, starts_at, rule, "
                "action, detail, job_id, operator) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), outcome.fingerprint, outcome.status, outcome.alertname,
                 json.dumps(alert.get("labels") or {}, sort_keys=True),
                 json.dumps(alert.get("annotations") or {}, sort_keys=True), alert.get("startsAt"), outcome.rule,
                 outcome.action, outcome.detail, outcome.job_id, operator))


def alert_events(store, limit: int = 200) -> list[dict]:
    with store.lock:
        rows = store.conn.execute("SELECT * FROM alert_events ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
    out = []
    for row in rows:
        item = dict(zip(row.keys(), row))
        item["labels"] = json.loads(item["labels"])
        item["annotations"] = json.loads(item["annotations"])
        out.append(item)
    return out
