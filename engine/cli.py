"""The command line: queue operations, the audit trail, devices, schedules, settings and a headless
engine, for scripts and for a terminal over SSH (`python main.py <command> ...`).

Every command works on the store directly, engine running or not: it opens the database, makes
one `Operations` call (one transaction, audited where it must be) and renders the result. A
running engine picks the change up within a tick; otherwise it waits for the next start. This
module only parses arguments and renders; the rules live in `engine.operations`.

Exit status: 0 done; 1 failed (audit trail damaged, engine already running, database error);
2 refused (bad input: nothing was changed). `--json` prints one JSON document on stdout.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as _dt
import difflib
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from . import paths, policy, timers
from .api.tokens import TokenFileDamaged
from .audit import JUMP_KINDS, KINDS, AuditEntry, AuditTrail
from .core import Engine, EngineBusy, engine_running
from .devices import DeviceMonitor
from .events import EVENTS_FILE, iter_events
from .jobs import JobState
from .operations import MoveResult, OperationError, Operations
from .policy import DeviceView
from .settings import EngineSettings
from .spec import Problem, SpecError, expand_path
from .store import JobRecord, StaleState, Store, UnknownJob

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
# Settings the running engine reads once, at its start.
AUDIT_DEFAULT_LIMIT = 50


class CliError(ValueError):
    """Bad input caught here (a malformed key=value, a job id that is not a number)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UsageError(self, message)


# ---------------------------------------------------------------------- context


class Context:
    """The parsed arguments and what a command needs, opened on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = getattr(args, "json", False)
        self.cpu_slots: int = getattr(args, "cpu_slots", None) or _env_cpu_slots()
        self.use_nvml: bool = not getattr(args, "no_nvml", False)
        if self.cpu_slots < 1:
            raise CliError(f"--cpu-slots must be at least 1, got {self.cpu_slots}", field="cpu_slots")
        self.home = paths.cutline_home(getattr(args, "home", None))
        self._store: Store | None = None
        self._audit: AuditTrail | None = None
        self._monitor: DeviceMonitor | None = None
        self._ops: Operations | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.home)
        return self._store

    @property
    def audit(self) -> AuditTrail:
        if self._audit is None:
            with self.store.lock:
                self._audit = self.store.audit_trail()
        return self._audit

    @property
    def monitor(self) -> DeviceMonitor:
        if self._monitor is None:
            self._monitor = DeviceMonitor(cpu_slots=self.cpu_slots, use_nvml=self.use_nvml)
        return self._monitor

    @property
    def ops(self) -> Operations:
        if self._ops is None:
            self._ops = Operations(self.store, self.audit, self.device_views())
        return self._ops

    def device_views(self) -> list[DeviceView]:
        """The devices the engine offers: as its last start recorded them, unless this command
        was told which to use (--cpu-slots / --no-nvml); else discovered here."""
        recorded = self.store.meta("devices")
        explicit = getattr(self.args, "cpu_slots", None) is not None or getattr(self.args, "no_nvml", False)
        if recorded and not explicit:
            return [DeviceView(d["id"], d["kind"]) for d in recorded]
        return [DeviceView(d.id, d.kind) for d in self.monitor.devices]

    def say(self, *lines: str) -> None:
        if not self.json:
            for line in lines:
                print(line)

    def engine_note(self, what: str = "takes effect within a second") -> None:
        pid = engine_running(self.home)
        if pid is not None:
            self.say(f"engine (pid {pid}) running: {what}")
        else:
            self.say("no engine running: takes effect at the next start")

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
        if self._store is not None:
            self._store.close()


def _env_cpu_slots() -> int:
    try:
        return max(1, int(os.environ.get("CUTLINE_CPU_SLOTS", "1")))
    except ValueError:
        return 1


# ---------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        e.parser.print_usage(sys.stderr)
        return _fail(want_json, [(None, f"{e.parser.prog}: {e}")], EXIT_REFUSED)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return _fail(want_json, [(None, "give a command")], EXIT_REFUSED)
    ctx = None
    try:
        ctx = Context(args)
        data = args.handler(ctx)
        code = EXIT_FAILED if data.get("ok") is False else EXIT_OK
        if ctx.json:
            data = {"ok": True, **data, "engine_running": engine_running(ctx.home)}
            print(json.dumps(data, indent=2, default=str))
        return code
    except SpecError as e:
        return _fail(want_json, [(p.field, p.message) for p in e.problems], EXIT_REFUSED, with_field=True)
    except UnknownJob as e:
        return _fail(want_json, [("job", str(e))], EXIT_REFUSED)
    except StaleState as e:
        return _fail(want_json, [("job", f"{e}: it changed meanwhile; look again and retry")], EXIT_REFUSED)
    except (OperationError, CliError, ValueError) as e:
        return _fail(want_json, [(getattr(e, "field", None), str(e))], EXIT_REFUSED)
    except EngineBusy as e:
        return _fail(want_json, [("engine", str(e))], EXIT_FAILED)
    except TokenFileDamaged as e:
        return _fail(want_json, [("token", str(e))], EXIT_FAILED)
    except FileNotFoundError as e:  # a file named on the command line (rules check/install FILE)
        return _fail(want_json, [("file", f"not found: {e.filename}")], EXIT_REFUSED)
    except (OSError, UnicodeDecodeError) as e:
        return _fail(want_json, [("file", str(e))], EXIT_FAILED)
    except sqlite3.Error as e:
        home = ctx.home if ctx is not None else "?"
        return _fail(want_json, [("database", f"{home}: {e}")], EXIT_FAILED)
    except BrokenPipeError:  # `cutline list | head`
        return EXIT_OK
    finally:
        if ctx is not None:
            ctx.close()


def _fail(want_json: bool, errors: list[tuple[str | None, str]], code: int, *, with_field: bool = False) -> int:
    for field, message in errors:
        prefix = f"{field}: " if with_field and field else ""
        print(f"error: {prefix}{message}", file=sys.stderr)
    if want_json:
        print(json.dumps({"ok": False, "errors": [{"field": f, "message": m} for f, m in errors]}, indent=2))
    return code


# ---------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    # Common options are accepted after any (sub)command; SUPPRESS keeps a nested parser's default
    # from overwriting a value given earlier on the line.
    common = _Parser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--home", default=argparse.SUPPRESS,
                   help="Cutline's data folder (default: $CUTLINE_HOME, else the user data folder)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print one JSON document on stdout")
    g.add_argument("--cpu-slots", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="CPU slots offered when no NVIDIA GPU is found (default: $CUTLINE_CPU_SLOTS or 1)")
    g.add_argument("--no-nvml", action="store_true", default=argparse.SUPPRESS,
                   help="do not look for NVIDIA GPUs (CPU slots only)")

    parser = _Parser(prog="cutline", description="Cutline: the training queue from the command line.",
                     parents=[common])
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Callable[[Context], dict], help: str, parent=sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(handler=handler)
        return p

    def operator(p: argparse.ArgumentParser, reason: bool = True, reason_help: str = "why (goes into the audit trail)") -> None:
        p.add_argument("--operator", help="who does this (default: your user name)")
        if reason:
            p.add_argument("--reason", help=reason_help)

    p = command("submit", cmd_submit, "validate a training job and queue it")
    p.add_argument("--name", help="the job's name")
    p.add_argument("--data", help="the dataset's data.yaml")
    p.add_argument("--model", help="a local .pt weights file or a model .yaml (e.g. yolov8n.yaml)")
    _train_options(p)
    p.add_argument("--priority", default="normal", metavar="urgent|high|normal|low")
    p.add_argument("--owner", help="who gets told when it ends (default: your user name)")
    p.add_argument("--device", metavar="any|gpu|cpu", help="device preference (default: any)")
    operator(p, reason_help="required for an urgent job (it jumps the queue)")

    p = command("list", cmd_list, "the queue, in order, with why each waiting job waits")
    p.add_argument("--state", action="append", metavar="STATE",
                   help="only jobs in this state (repeat, or comma-separate)")
    p.add_argument("--owner", help="only this owner's jobs")
    p.add_argument("--all", action="store_true", help="include finished, failed and cancelled jobs")

    p = command("show", cmd_show, "everything about one job")
    p.add_argument("job", metavar="JOB")

    p = command("move", cmd_move, "put a job before or after another (moving up is a jump: give a reason)")
    p.add_argument("job", metavar="JOB")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--before", metavar="JOB")
    where.add_argument("--after", metavar="JOB")
    operator(p, reason_help="required when it moves up past any job")

    p = command("jump", cmd_jump, "make a job urgent and first in line (preempting if no device is free)")
    p.add_argument("job", metavar="JOB")
    operator(p, reason_help="why it jumps (required; goes into the audit trail)")

    p = command("priority", cmd_priority, "change a job's priority class (raising it is a jump: give a reason)")
    p.add_argument("job", metavar="JOB")
    p.add_argument("level", metavar="LEVEL", help="urgent, high, normal or low")
    operator(p, reason_help="required when raising it")

    for name, handler, help, has_reason in (
        ("pause", cmd_pause, "hold a job (a running one saves a checkpoint first)", True),
        ("resume", cmd_resume, "put a paused job back in its place in the queue", False),
        ("cancel", cmd_cancel, "cancel a job (a running one stops at a checkpoint)", True),
        ("retry", cmd_retry, "queue a failed job again, from its last checkpoint", False),
    ):
        p = command(name, handler, help)
        p.add_argument("job", metavar="JOB")
        operator(p, reason=has_reason, reason_help="why (goes into the audit trail)")

    p = command("emergency", cmd_emergency, "queue an urgent retrain from a job's trained weights or a model file")
    p.add_argument("--from-job", metavar="JOB", help="retrain from this job's best.pt (else last.pt), on its dataset")
    p.add_argument("--model", help="a model file to start from (instead of, or overriding, the job's weights)")
    p.add_argument("--data", help="the dataset's data.yaml (default: the job's own)")
    p.add_argument("--name", help="the new job's name")
    _train_options(p)
    p.add_argument("--owner", help="who gets told when it ends (default: the operator)")
    p.add_argument("--device", metavar="any|gpu|cpu", help="device preference (default: the job's)")
    operator(p, reason_help="why (required; goes into the audit trail)")

    p = command("audit", cmd_audit, "the audit trail: who jumped what, when and why")
    p.add_argument("--job", metavar="JOB", help="only entries about this job")
    p.add_argument("--kind", action="append", metavar="KIND", help="only entries of this kind (repeat, or comma-separate)")
    p.add_argument("--limit", type=int, default=AUDIT_DEFAULT_LIMIT, metavar="N",
                   help=f"the most recent N entries (default {AUDIT_DEFAULT_LIMIT}; 0 for all)")
    audit_sub = p.add_subparsers(title="audit commands", metavar="ACTION")
    command("verify", cmd_audit_verify, "check the hash chain and its anchors (exit 1 if damaged)", audit_sub)
    q = command("export", cmd_audit_export, "write every entry, with its hashes, to a CSV file", audit_sub)
    q.add_argument("file", metavar="FILE.csv")

    command("devices", cmd_devices, "the devices jobs can train on, with a reading of each")

    p = command("schedule", cmd_schedule_list, "cron-scheduled retrains")
    schedule_sub = p.add_subparsers(title="schedule commands", metavar="ACTION")
    q = command("add", cmd_schedule_add, "add a schedule: a job template submitted at each cron time", schedule_sub)
    q.add_argument("--name", help="the schedule's name (also the jobs' name)")
    q.add_argument("--cron", help="5-field crontab line, local time, e.g. '0 2 * * *' for 02:00 daily")
    q.add_argument("--data", help="the dataset's data.yaml")
    q.add_argument("--model", help="a local .pt weights file or a model .yaml")
    _train_options(q)
    q.add_argument("--priority", default="normal", metavar="high|normal|low")
    q.add_argument("--owner", help="who gets told when its jobs end (default: your user name)")
    q.add_argument("--device", metavar="any|gpu|cpu", help="device preference (default: any)")
    q.add_argument("--operator", help="who adds it (default: your user name)")
    command("list", cmd_schedule_list, "schedules with their next run", schedule_sub)
    q = command("remove", cmd_schedule_remove, "remove a schedule (jobs it already queued stay)", schedule_sub)
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("--operator", help="who removes it (default: your user name)")

    p = command("settings", cmd_settings_show, "the engine's settings")
    settings_sub = p.add_subparsers(title="settings commands", metavar="ACTION")
    q = command("set", cmd_settings_set, "change settings: key=value ... (all checked; a bad one changes nothing)",
                settings_sub)
    q.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    operator(q)

    p = command("token", cmd_token_list, "HTTP API tokens (names only; the secrets stay in the owner-only file)")
    token_sub = p.add_subparsers(title="token commands", metavar="ACTION")
    q = command("show", cmd_token_show, "print a token's secret (for a client's credentials file)", token_sub)
    q.add_argument("name", nargs="?", default="default")
    q = command("regenerate", cmd_token_regenerate, "a new secret for a token (created if missing); the old one "
                "stops working at once", token_sub)
    q.add_argument("name", nargs="?", default="default")
    q = command("revoke", cmd_token_revoke, "delete a token", token_sub)
    q.add_argument("name")

    p = command("alerts", cmd_alerts, "alerts received from Alertmanager and what each caused")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p = command("rules", cmd_rules_show, "the alert rules (alert labels -> emergency retrain)")
    rules_sub = p.add_subparsers(title="rules commands", metavar="ACTION")
    q = command("check", cmd_rules_check, "validate a rules file without installing it", rules_sub)
    q.add_argument("file", metavar="FILE.yaml")
    q = command("install", cmd_rules_install, "validate and install a rules file (a bad one changes nothing)",
                rules_sub)
    q.add_argument("file", metavar="FILE.yaml")

    command("headless", cmd_headless, "run the engine without a window until SIGTERM or Ctrl+C")
    return parser


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", metavar="E")
    p.add_argument("--imgsz", metavar="S")
    p.add_argument("--batch", metavar="B")
    p.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="any other Ultralytics train argument (repeatable; values are YAML scalars)")


def _scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _train_args(a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("epochs", "imgsz", "batch"):
        value = getattr(a, key, None)
        if value is not None:
            out[key] = _scalar(value)
    for item in a.arg or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"--arg expects key=value, got {item!r}", field="arg")
        if key in out:
            raise CliError(f"training argument {key!r} given twice", field=key)
        out[key] = _scalar(value.strip())
    return out


def _job_id(text: str | None, what: str = "job") -> int | None:
    if text is None:
        return None
    try:
        return int(str(text).strip().lstrip("#"))
    except ValueError:
        raise CliError(f"{what} ids are numbers, got {text!r}", field=what) from None


def _existing_path(text: str | None) -> str | None:
    """A path as the user typed it, made absolute when it names a file (the engine's cwd differs)."""
    if not text:
        return text
    p = expand_path(text)
    return str(p.resolve()) if p.exists() else text


# ---------------------------------------------------------------------- queue views


@dataclasses.dataclass
class QueueView:
    queue: list[JobRecord]
    positions: dict[int, int]
    decision: policy.Decision
    engine_pid: int | None

    def note(self, job: JobRecord) -> str:
        """One line on where the job stands: the policy's waiting reason for a queued job."""
        if job.state is JobState.QUEUED:
            reason = self.decision.reason_for(str(job.id))
            if reason is not None:
                return reason
            start = next((a for a in self.decision.starts if a.job_id == str(job.id)), None)
            if start is not None:
                if self.engine_pid is not None:
                    return f"starting: {start.reason}"
                return f"would start: {start.reason} (no engine running)"
            return "queued"
        if job.state is JobState.PAUSED:
            return "held: `resume` puts it back in its place"
        if job.state is JobState.PREEMPTING:
            then = job.stop_target or JobState.QUEUED.value
            return f"stopping at a checkpoint, then {then}" + (f": {job.stop_reason}" if job.stop_reason else "")
        if job.state is JobState.STARTING:
            return f"preparing on {job.device_id}" + (", starts when the device is free" if job.gated else "")
        if job.state is JobState.RUNNING:
            cp = f"; checkpoint {_ago(job.last_checkpoint_at)}" if job.last_checkpoint_at else ""
            return f"running since {_clock(job.running_since)}{cp}"
        if job.state is JobState.FAILED:
            return "failed: " + _short((job.error or "").splitlines()[0] if job.error else "?", 90)
        return f"{job.state.value} {_when(job.ended_at)}"


def _queue_view(ctx: Context) -> QueueView:
    queue = ctx.ops.queue()
    return QueueView(queue, {j.id: i for i, j in enumerate(queue, 1)}, policy.decide(ctx.ops.snapshot()),
                     engine_running(ctx.home))


def _job_json(job: JobRecord, view: QueueView) -> dict[str, Any]:
    waiting = view.decision.reason_for(str(job.id)) if job.state is JobState.QUEUED else None
    return {**job.to_dict(), "position": view.positions.get(job.id), "waiting": waiting, "note": view.note(job)}


def _position_text(job: JobRecord, view: QueueView) -> str:
    pos = view.positions.get(job.id)
    return f"{_ordinal(pos)} of {len(view.queue)} in the queue" if pos else "not in the queue"


def _progress(job: JobRecord) -> str:
    if job.epoch is None and job.epochs is None:
        return "-"
    epoch = (job.epoch or 0) + 1
    return f"ep {epoch}/{job.epochs or '?'} b {job.batch or 0}/{job.batches or '?'} {job.progress:.0%}"


def _map(job: JobRecord) -> str:
    value = (job.metrics or {}).get("mAP50-95")
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _device(job: JobRecord) -> str:
    if job.state.is_active and job.device_id:
        return job.device_id
    return job.device_kind or "any"


# ---------------------------------------------------------------------- submit, list, show


def cmd_submit(ctx: Context) -> dict:
    a = ctx.args
    job = ctx.ops.submit(name=a.name, model=a.model, data=a.data, train_args=_train_args(a), priority=a.priority,
                         owner=a.owner, device_kind=a.device, operator=a.operator, reason=a.reason)
    return _queued(ctx, job, "queued")


def _queued(ctx: Context, job: JobRecord, verb: str) -> dict:
    view = _queue_view(ctx)
    ctx.say(f"job {job.id} {verb}: {job.name!r} ({job.priority.label}, owner {job.owner}), "
            f"{_position_text(job, view)}",
            f"  {view.note(job)}")
    entry = _last_entry(ctx, job.id)
    if entry is not None and entry.kind in JUMP_KINDS:
        _say_jump(ctx, entry)
    ctx.engine_note()
    return {"job": _job_json(job, view), "audit": _entry_json(entry) if entry else None}


def cmd_list(ctx: Context) -> dict:
    a = ctx.args
    states: set[JobState] = set()
    for text in a.state or []:
        for part in filter(None, (s.strip().lower() for s in text.split(","))):
            try:
                states.add(JobState(part))
            except ValueError:
                names = [s.value for s in JobState]
                close = difflib.get_close_matches(part, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise CliError(f"unknown state {part!r}{hint}: expected one of {', '.join(names)}",
                               field="state") from None
    view = _queue_view(ctx)
    ended = [] if not (a.all or any(s.is_terminal for s in states)) else [
        j for j in ctx.store.jobs({s for s in JobState if s.is_terminal})
    ]
    jobs = [j for j in view.queue + ended
            if (not states or j.state in states) and (a.owner is None or j.owner == a.owner)]
    rows = [[str(view.positions.get(j.id, "-")), str(j.id), _short(j.name, 32), j.owner, j.priority.label,
             j.state.value, _progress(j), _map(j), _device(j), view.note(j)] for j in jobs]
    if not jobs:
        ctx.say("no jobs" + ("" if a.all or states else " in the queue (--all includes ended jobs)"))
    else:
        ctx.say(*_table(["#", "ID", "NAME", "OWNER", "PRIORITY", "STATE", "PROGRESS", "mAP50-95", "DEVICE", "NOTE"],
                        rows, right={0, 1, 7}))
    return {"jobs": [_job_json(j, view) for j in jobs]}


def cmd_show(ctx: Context) -> dict:
    job = ctx.store.job(_job_id(ctx.args.job))
    view = _queue_view(ctx)
    transitions = ctx.store.transitions(job.id)
    events = _events_summary(job)
    entries = ctx.audit.entries(job_id=job.id)

    ctx.say(f"job {job.id}: {job.name}", f"  {job.state.value}, {_position_text(job, view)}: {view.note(job)}", "")
    fields = job.to_dict()
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        ctx.say(f"  {key:<{width}}  {_field_text(key, value)}")
    ctx.say("", f"transitions ({len(transitions)}):")
    ctx.say(*_indent(_table(["TIME", "FROM", "TO", "EVENT", "DETAIL"],
                            [[_when(t["ts"]), t["from_state"], t["to_state"], t["event"], t["detail"]]
                             for t in transitions])) if transitions else ["  none"])
    ctx.say("", f"events ({events['count']} in {events['path'] or 'no run folder'}):")
    if events["count"]:
        ctx.say("  by kind: " + ", ".join(f"{k} {n}" for k, n in events["by_kind"].items()))
        ctx.say(*_indent(_table(["TIME", "EVENT", "DETAIL"],
                                [[_when(e.get("ts")), str(e.get("event")), _event_detail(e)] for e in events["last"]])))
    ctx.say("", f"audit ({len(entries)}):")
    ctx.say(*_indent(_audit_rows(entries)) if entries else ["  none"])
    return {"job": _job_json(job, view), "transitions": transitions, "events": events,
            "audit": [_entry_json(e) for e in entries]}


def _events_summary(job: JobRecord, last: int = 5) -> dict[str, Any]:
    if not job.run_dir:
        return {"path": None, "count": 0, "by_kind": {}, "last": []}
    path = Path(job.run_dir) / EVENTS_FILE
    counts: collections.Counter[str] = collections.Counter()
    tail: collections.deque[dict] = collections.deque(maxlen=last)
    for event in iter_events(path):
        counts[str(event.get("event"))] += 1
        tail.append(event)
    return {"path": str(path), "count": sum(counts.values()), "by_kind": dict(counts), "last": list(tail)}


def _event_detail(event: dict) -> str:
    rest = {k: v for k, v in event.items() if k not in ("ts", "event")}
    return _short(", ".join(f"{k}={_compact(v)}" for k, v in rest.items()), 110)


def _field_text(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and (key.endswith("_at") or key.endswith("_since") or key == "stop_deadline"):
        return _when(value)
    if isinstance(value, (dict, list)):
        return _compact(value)
    return str(value)


# ---------------------------------------------------------------------- order


def cmd_move(ctx: Context) -> dict:
    a = ctx.args
    result = ctx.ops.move(_job_id(a.job), before=_job_id(a.before), after=_job_id(a.after),
                          operator=a.operator, reason=a.reason)
    return _moved(ctx, result)


def cmd_jump(ctx: Context) -> dict:
    a = ctx.args
    return _moved(ctx, ctx.ops.jump(_job_id(a.job), reason=a.reason, operator=a.operator))


def cmd_priority(ctx: Context) -> dict:
    a = ctx.args
    return _moved(ctx, ctx.ops.set_priority(_job_id(a.job), a.level, operator=a.operator, reason=a.reason))


def _moved(ctx: Context, result: MoveResult) -> dict:
    job = result.job
    view = _queue_view(ctx)
    passed = ", ".join(str(i) for i in result.passed)
    where = f"now {job.priority.label}, {_position_text(job, view)}"
    if result.kind == "none":
        ctx.say(f"job {job.id} ({job.name}): already there ({where}); nothing changed")
    elif result.kind == "jump":
        ctx.say(f"job {job.id} ({job.name}) moved up: {where}" + (f", ahead of job {passed}" if passed else ""))
    else:
        ctx.say(f"job {job.id} ({job.name}) moved down: {where}" + (f", behind job {passed}" if passed else ""))
    entry = _last_entry(ctx, job.id) if result.kind != "none" else None
    if entry is not None:
        _say_jump(ctx, entry)
    if result.kind != "none":
        ctx.engine_note()
    return {"result": result.kind, "passed": list(result.passed), "job": _job_json(job, view),
            "audit": _entry_json(entry) if entry else None}


# ---------------------------------------------------------------------- hold, stop, retry


def cmd_pause(ctx: Context) -> dict:
    a = ctx.args
    return _state_change(ctx, "pause", lambda job_id: ctx.ops.pause(job_id, operator=a.operator, reason=a.reason))


def cmd_cancel(ctx: Context) -> dict:
    a = ctx.args
    return _state_change(ctx, "cancel", lambda job_id: ctx.ops.cancel(job_id, operator=a.operator, reason=a.reason))


def cmd_resume(ctx: Context) -> dict:
    return _state_change(ctx, "resume", lambda job_id: ctx.ops.resume(job_id, operator=ctx.args.operator))


def cmd_retry(ctx: Context) -> dict:
    return _state_change(ctx, "retry", lambda job_id: ctx.ops.retry(job_id, operator=ctx.args.operator))


def _state_change(ctx: Context, verb: str, operation: Callable[[int], JobRecord]) -> dict:
    before = ctx.store.job(_job_id(ctx.args.job))
    after = operation(before.id)
    changed = (after.state, after.stop_target) != (before.state, before.stop_target)
    if not changed:
        ctx.say(f"job {after.id} ({after.name}) is already {after.state.value}; nothing changed")
    elif after.state is JobState.PREEMPTING:
        ctx.say(f"job {after.id} ({after.name}): {before.state.value} -> stopping: its worker saves a checkpoint, "
                f"then it is {after.stop_target}")
    else:
        ctx.say(f"job {after.id} ({after.name}): {before.state.value} -> {after.state.value}")
        if verb == "retry":
            entry = _last_entry(ctx, after.id)
            source = entry.details.get("resumes_from") if entry else None
            ctx.say(f"  resumes from {source}" if source else "  no checkpoint: starts from the beginning")
    if changed:
        ctx.engine_note()
    return {"changed": changed, "state_before": before.state.value, "job": after.to_dict()}


def cmd_emergency(ctx: Context) -> dict:
    a = ctx.args
    job = ctx.ops.emergency(reason=a.reason, operator=a.operator, from_job=_job_id(a.from_job), model=a.model,
                            data=a.data, name=a.name, train_args=_train_args(a), owner=a.owner, device_kind=a.device)
    return _queued(ctx, job, "queued as an emergency")


# ---------------------------------------------------------------------- audit


def cmd_audit(ctx: Context) -> dict:
    a = ctx.args
    kinds = None
    if a.kind:
        kinds = [k.strip().lower() for text in a.kind for k in text.split(",") if k.strip()]
        for k in kinds:
            if k not in KINDS:
                close = difflib.get_close_matches(k, sorted(KINDS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise CliError(f"unknown audit kind {k!r}{hint}: expected one of {', '.join(sorted(KINDS))}",
                               field="kind")
    if a.limit < 0:
        raise CliError(f"--limit must be >= 0, got {a.limit}", field="limit")
    job_id = _job_id(a.job)
    entries = ctx.audit.entries(job_id=job_id, kind=kinds, limit=a.limit or None)
    total = len(ctx.audit.entries(job_id=job_id, kind=kinds)) if a.limit and len(entries) == a.limit else len(entries)
    if entries:
        ctx.say(*_audit_rows(entries))
        if total > len(entries):
            ctx.say(f"(the last {len(entries)} of {total} entries; --limit 0 shows all)")
    else:
        ctx.say("no audit entries" + (" match" if a.job or a.kind else ""))
    return {"entries": [_entry_json(e) for e in entries], "total": total}


def cmd_audit_verify(ctx: Context) -> dict:
    result = ctx.audit.verify()
    if ctx.json:
        for p in result.problems:
            print(f"error: audit: {p}", file=sys.stderr)
    elif result.ok:
        ctx.say(result.summary())
    else:
        ctx.say(f"audit trail DAMAGED ({result.checked} entries checked):", *(f"  {p}" for p in result.problems))
    out = {"intact": result.ok, "checked": result.checked, "problems": result.problems}
    if not result.ok:
        out.update(ok=False, errors=[{"field": "audit", "message": p} for p in result.problems])
    return out


def cmd_audit_export(ctx: Context) -> dict:
    path = Path(ctx.args.file).expanduser().resolve()
    count = ctx.audit.to_csv(path)
    result = ctx.audit.verify()
    ctx.say(f"wrote {count} audit entries to {path}", f"  {result.summary()}")
    return {"file": str(path), "entries": count, "intact": result.ok, "problems": result.problems}


def _last_entry(ctx: Context, job_id: int) -> AuditEntry | None:
    entries = ctx.audit.entries(job_id=job_id, limit=1)
    return entries[0] if entries else None


def _say_jump(ctx: Context, entry: AuditEntry) -> None:
    ctx.say(f"  audit #{entry.seq}: {entry.kind} by {entry.operator}: {entry.reason!r}")
    for v in entry.details.get("expected_victims") or []:
        at = f"epoch {(v.get('epoch') or 0) + 1}, batch {v.get('batch') or 0}" if v.get("epochs") else "its start"
        cp = f"last checkpoint {_ago(v['last_checkpoint_at'])}" if v.get("last_checkpoint_at") else "no checkpoint yet"
        ctx.say(f"  will preempt job {v.get('job')} ({v.get('name')}, {v.get('owner')}) on {v.get('device')} "
                f"at {at}; {cp}")


def _audit_rows(entries: list[AuditEntry]) -> list[str]:
    return _table(["SEQ", "TIME", "KIND", "OPERATOR", "JOB", "REASON", "DETAILS"],
                  [[str(e.seq), _when(e.ts), e.kind, e.operator, e.job_id or "-", _short(e.reason, 60),
                    _audit_digest(e)] for e in entries], right={0})


def _audit_digest(e: AuditEntry) -> str:
    d = e.details
    if "from_position" in d:
        passed = d.get("passed") or []
        text = f"{d.get('from_priority')} #{d.get('from_position')} -> {d.get('to_priority')} #{d.get('to_position')}"
        return text + (f", passed {', '.join(map(str, passed))}" if passed else "")
    if e.kind == "preempt" and d.get("for_jobs") is not None:  # by a cluster
        return f"by the cluster, for job(s) {', '.join(str(u.get('job')) for u in d['for_jobs'])}"
    if e.kind == "preempt":
        return f"for job {d.get('for_job')} on {d.get('device')}"
    if e.kind == "requeue":
        return "requeued by the cluster"
    if e.kind in ("submit", "jump", "emergency") and "name" in d:
        victims = d.get("expected_victims") or []
        return f"{d.get('priority')}: {d.get('name')}" + (
            f", preempts {', '.join(str(v.get('job')) for v in victims)}" if victims else "")
    if e.kind == "settings":
        return ", ".join(f"{k}={_compact(v.get('to'))}" for k, v in (d.get("changed") or {}).items())
    if e.kind == "schedule":
        return f"schedule {d.get('schedule')} {d.get('cron', '')}".strip()
    return ""


def _entry_json(e: AuditEntry) -> dict[str, Any]:
    return dataclasses.asdict(e)


# ---------------------------------------------------------------------- devices


def cmd_devices(ctx: Context) -> dict:
    monitor = ctx.monitor
    if monitor.backend == "cpu":
        time.sleep(0.25)  # psutil's CPU percentage is measured between two readings
    samples = {s.device_id: s for s in monitor.sample()}
    settings = ctx.ops.settings
    holders = {j.device_id: j for j in ctx.store.jobs({s for s in JobState if s.is_active})}
    rows, out = [], []
    for d in monitor.devices:
        s = samples.get(d.id)
        job = holders.get(d.id)
        reserved = settings.reserved_device == d.id
        rows.append([d.id, d.kind, _short(d.name, 48), _pct(s.utilization if s else None),
                     _memory(s.memory_used if s else None, s.memory_total if s else d.memory_total),
                     f"{s.temperature_c:.0f} C" if s and s.temperature_c is not None else "-",
                     f"{s.power_w:.0f} W" if s and s.power_w is not None else "-",
                     (f"job {job.id} ({job.state.value})" if job else "free") + (" [reserved for urgent]" if reserved else "")])
        out.append({**dataclasses.asdict(d), "sample": dataclasses.asdict(s) if s else None,
                    "job": job.id if job else None, "reserved_for_urgent": reserved})
    ctx.say(f"backend: {monitor.backend_note}")
    ctx.say(*_table(["DEVICE", "KIND", "NAME", "UTIL", "MEMORY", "TEMP", "POWER", "JOB"], rows, right={3, 4, 5, 6}))
    return {"backend": monitor.backend, "backend_note": monitor.backend_note, "devices": out}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _memory(used: int | None, total: int | None) -> str:
    gib = 1024 ** 3
    if total is None:
        return "-"
    if used is None:
        return f"? / {total / gib:.1f} GiB"
    return f"{used / gib:.1f} / {total / gib:.1f} GiB"


# ---------------------------------------------------------------------- schedules


def cmd_schedule_add(ctx: Context) -> dict:
    a = ctx.args
    if not a.cron:
        raise SpecError([Problem("cron", "give the crontab line, e.g. --cron '0 2 * * *' for 02:00 daily")])
    template = {"name": a.name, "model": _existing_path(a.model), "data": _existing_path(a.data),
                "train_args": _train_args(a), "priority": a.priority, "owner": a.owner, "device_kind": a.device}
    template = {k: v for k, v in template.items() if v is not None}
    schedule = timers.add_schedule(ctx.store, ctx.ops, name=a.name or "", cron=a.cron, template=template,
                                   operator=a.operator)
    upcoming = timers.next_fire(schedule, time.time())
    ctx.say(f"schedule {schedule.id} added: {schedule.name!r}, {schedule.cron} ({schedule.timezone}); "
            f"next run {_when(upcoming)}")
    ctx.engine_note("picks it up within a few seconds")
    return {"schedule": {**schedule.to_dict(), "next_fire": upcoming}}


def cmd_schedule_list(ctx: Context) -> dict:
    now = time.time()
    schedules = ctx.store.schedules()
    out, rows = [], []
    for s in schedules:
        upcoming = timers.next_fire(s, now) if s.enabled else None
        t = s.template
        what = f"{Path(str(t.get('model'))).name} on {Path(str(t.get('data'))).name}, {t.get('priority', 'normal')}"
        if t.get("owner"):
            what += f", owner {t['owner']}"
        if t.get("train_args"):
            what += ", " + " ".join(f"{k}={_compact(v)}" for k, v in t["train_args"].items())
        rows.append([str(s.id), _short(s.name, 32), s.cron, s.timezone, _when(upcoming) if s.enabled else "disabled",
                     _when(s.last_fired_at), what])
        out.append({**s.to_dict(), "next_fire": upcoming})
    if rows:
        ctx.say(*_table(["ID", "NAME", "CRON", "TIMEZONE", "NEXT RUN", "LAST RUN", "JOB"], rows, right={0}))
    else:
        ctx.say("no schedules")
    return {"schedules": out}


def cmd_schedule_remove(ctx: Context) -> dict:
    schedule = timers.remove_schedule(ctx.store, ctx.ops, ctx.args.id, operator=ctx.args.operator)
    ctx.say(f"schedule {schedule.id} ({schedule.name}) removed")
    ctx.engine_note("drops it within a few seconds")
    return {"removed": schedule.to_dict()}


# ---------------------------------------------------------------------- settings


def cmd_settings_show(ctx: Context) -> dict:
    stored = ctx.store.settings()
    current = EngineSettings.from_mapping(stored)
    values = current.to_dict()
    width = max(len(k) for k in values)
    for key, value in values.items():
        source = "set" if key in stored else "default"
        ctx.say(f"{key:<{width}}  {_compact(value):<12}  ({source})")
    return {"settings": values, "set": sorted(k for k in stored if k in values)}


def cmd_settings_set(ctx: Context) -> dict:
    a = ctx.args
    new: dict[str, Any] = {}
    for pair in a.pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"expected key=value, got {pair!r}", field="settings")
        value = _scalar(text.strip())
        if key == "reserved_device":
            value = None if value is None or str(value).lower() in ("none", "null", "") else str(value)
        new[key] = value
    changed = ctx.ops.change_settings(new, operator=a.operator, reason=a.reason)
    for key, c in changed.items():
        ctx.say(f"{key}: {_compact(c['from'])} -> {_compact(c['to'])}")
    if changed:
        ctx.engine_note()
    else:
        ctx.say("nothing changed")
    return {"changed": changed, "settings": ctx.ops.settings.to_dict()}


# ---------------------------------------------------------------------- API tokens, alerts, rules


def cmd_token_list(ctx: Context) -> dict:
    from .api.tokens import TokenStore

    tokens = TokenStore(ctx.home).tokens()
    url = ctx.store.meta("api_url")
    ctx.say(f"API: {url or 'not serving (no engine running, or the API is off)'}; tokens in {TokenStore(ctx.home).path}")
    for t in tokens:
        ctx.say(f"  {t.name:<20} created {_when(t.created_at)}")
    if not tokens:
        ctx.say("  no tokens (the engine creates 'default' at its first start)")
    return {"api_url": url, "tokens": [{"name": t.name, "created_at": t.created_at} for t in tokens]}


def cmd_token_show(ctx: Context) -> dict:
    from .api.tokens import TokenStore

    token = next((t for t in TokenStore(ctx.home).tokens() if t.name == ctx.args.name), None)
    if token is None:
        raise CliError(f"no token named {ctx.args.name!r} (`token regenerate {ctx.args.name}` creates it)", field="name")
    ctx.say(token.secret)
    return {"name": token.name, "secret": token.secret}


def cmd_token_regenerate(ctx: Context) -> dict:
    from .api.tokens import TokenStore

    try:
        token = TokenStore(ctx.home).regenerate(ctx.args.name)
    except ValueError as e:
        raise CliError(str(e), field="name") from None
    ctx.say(token.secret)
    print(f"token {token.name!r} regenerated; update its clients (e.g. Alertmanager's credentials_file)", file=sys.stderr)
    return {"name": token.name, "secret": token.secret}


def cmd_token_revoke(ctx: Context) -> dict:
    from .api.tokens import TokenStore

    if not TokenStore(ctx.home).revoke(ctx.args.name):
        raise CliError(f"no token named {ctx.args.name!r}", field="name")
    ctx.say(f"token {ctx.args.name!r} revoked")
    return {"revoked": ctx.args.name}


def cmd_alerts(ctx: Context) -> dict:
    from .alerts import alert_events

    events = alert_events(ctx.store, max(1, ctx.args.limit))
    rows = [[_clock(e["ts"]), e["alertname"], e["status"], " ".join(f"{k}={v}" for k, v in sorted(e["labels"].items())
                                                                   if k != "alertname")[:40],
             e["rule"] or "—", e["action"] + (f" job {e['job_id']}" if e["job_id"] else ""), _short(e["detail"], 60)]
            for e in events]
    if rows:
        ctx.say(*_table(["TIME", "ALERT", "STATUS", "LABELS", "RULE", "CAUSED", "DETAIL"], rows))
    else:
        ctx.say("no alerts received")
    return {"alerts": events}


def cmd_rules_show(ctx: Context) -> dict:
    from .alerts import load_rules, rules_path

    path = rules_path(ctx.home)
    rules = load_rules(ctx.home)
    ctx.say(f"{path}: {len(rules)} rule(s)" if path.exists() else f"{path}: no rules file yet")
    for r in rules:
        source = f"job {r.retrain['from_job']}" if "from_job" in r.retrain else r.retrain.get("model")
        ctx.say(f"  {r.name}: {' '.join(f'{k}={v}' for k, v in r.match.items())} -> retrain from {source}"
                + (f", cooldown {r.cooldown_s:.0f} s" if r.cooldown_s else ""))
    return {"path": str(path), "rules": [r.__dict__ for r in rules]}


def cmd_rules_check(ctx: Context) -> dict:
    from .alerts import parse_rules

    rules = parse_rules(Path(ctx.args.file).read_text(encoding="utf-8"))
    ctx.say(f"{ctx.args.file}: {len(rules)} valid rule(s)")
    return {"valid": True, "rules": len(rules)}


def cmd_rules_install(ctx: Context) -> dict:
    from .alerts import save_rules

    rules = save_rules(ctx.home, Path(ctx.args.file).read_text(encoding="utf-8"))
    ctx.say(f"installed {len(rules)} rule(s); the next alert delivery uses them")
    return {"installed": len(rules)}


# ---------------------------------------------------------------------- headless engine


def cmd_headless(ctx: Context) -> dict:
    pid = engine_running(ctx.home)
    if pid is not None:
        raise EngineBusy(f"another Cutline engine (pid {pid}) already runs on {ctx.home}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per timer run otherwise
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            print("already stopping: running jobs are saving checkpoints", file=sys.stderr, flush=True)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    engine = Engine(ctx.home, cpu_slots=ctx.cpu_slots, use_nvml=ctx.use_nvml)
    try:
        try:
            engine.start()
        except BaseException:
            engine.shutdown()
            raise
        devices = ", ".join(f"{d.id} ({d.kind})" for d in engine.monitor.devices)
        info = {"pid": os.getpid(), "home": str(ctx.home), "devices": [d.id for d in engine.monitor.devices],
                "device_backend": engine.monitor.backend_note, "recovery": list(engine.recovery_report),
                "api": engine.api_note}
        if ctx.json:
            print(json.dumps({"ok": True, **info}), flush=True)
        else:
            print(f"engine running (pid {os.getpid()}) on {ctx.home}", flush=True)
            print(f"devices: {devices}; {engine.monitor.backend_note}", flush=True)
            print(f"HTTP API: {engine.api_note} (token: `cutline token show`)", flush=True)
            print("recovery: " + ("nothing to recover" if not engine.recovery_report else ""), flush=True)
            for line in engine.recovery_report:
                print(f"  {line}", flush=True)
            print("SIGTERM or Ctrl+C stops it: running jobs save a checkpoint and resume at the next start", flush=True)
        while not stop.wait(1.0):
            pass
        print("stopping: running jobs save a checkpoint first", file=sys.stderr, flush=True)
        engine.shutdown(mode="checkpoint")
        print("engine stopped", file=sys.stderr, flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    ctx.json = False  # its one JSON document was printed at the start
    return {}


# ---------------------------------------------------------------------- rendering helpers


def _table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Aligned columns; the last column is never padded (it holds the long text)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = []
        for i, cell in enumerate(row):
            cell = str(cell)
            if i == len(row) - 1:
                cells.append(cell)
            elif i in right:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return lines


def _indent(lines: list[str], by: str = "  ") -> list[str]:
    return [by + line for line in lines]


def _short(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _clock(ts: float | None) -> str:
    if ts is None:
        return "?"
    moment = _dt.datetime.fromtimestamp(ts)
    return moment.strftime("%H:%M:%S" if moment.date() == _dt.date.today() else "%Y-%m-%d %H:%M")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(0, time.time() - ts)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


if __name__ == "__main__":
    raise SystemExit(main())
