"""What an operator can do to the queue: submit, move, jump, change priority, pause, resume,
cancel, retry, emergency retrain. Each is one store transaction, and every jump writes its audit
entry inside that same transaction, so the entry exists before the engine can act on the change.

These work on the store alone, so the console (in-process), the CLI (another process, engine
running or not) and later the HTTP API share them. The running engine picks a change up within a
tick; with no engine running it waits in the store for the next start. Stopping a running job is
a request here (state PREEMPTING with a target); sending the signal is the engine's job.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import getpass
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import base_weights, paths, policy
from .audit import AuditTrail
from .jobs import JobEvent, JobState, Priority
from .policy import DeviceView, JobView, Snapshot
from .settings import EngineSettings
from .spec import JobSpec, Problem, SpecError, check_spec, expand_path
from .store import JobRecord, Store

DEVICE_KINDS = ("gpu", "cpu")
POOL_KIND = "pool"  # a cluster pool's pseudo-device: the cluster schedules it, not the policy
ACTIVE = frozenset(s for s in JobState if s.is_active)
NOT_ENDED = frozenset(s for s in JobState if not s.is_terminal)


class OperationError(ValueError):
    """An operation the queue refuses, with the field it concerns (for a dialog) when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def default_operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still someone, never empty
        return "unknown-user"


@dataclass(frozen=True)
class MoveResult:
    job: JobRecord
    kind: str                   # "jump", "yield" or "none"
    passed: tuple[int, ...]     # jobs it moved ahead of (jump) or behind (yield)
    details: dict | None = None  # the audit entry's details (expected victims for a jump)


class _Preview(Exception):
    def __init__(self, result: Any) -> None:
        super().__init__("preview")
        self.result = result


@dataclass(frozen=True)
class PreparedSubmission:
    """A submission that passed every check, not yet written (Operations.prepare_submission)."""
    fields: dict[str, Any]
    operator: str
    reason: str
    audit_kind: str
    origin: str
    parent_id: int | None
    schedule_id: int | None
    audit_details: dict[str, Any]


class Operations:
    def __init__(self, store: Store, audit: AuditTrail, devices: list[DeviceView],
                 settings: EngineSettings | None = None) -> None:
        self.store = store
        self.audit = audit
        self.devices = list(devices)
        self._settings = settings
        self.on_change: Callable[[], None] | None = None  # called after each committed operation

    def committed(self) -> None:
        # The anchor file follows committed entries; the store's lock keeps other threads'
        # transactions out while it reads the head. Inside a caller's transaction (a preview, a
        # batch) the caller's commit is what counts; it flushes after.
        with self.store.lock:
            if self.store.conn.in_transaction:
                return
            self.audit.flush_anchor()
        if self.on_change is not None:
            self.on_change()

    def preview(self, operation: Callable[[], Any]) -> Any:
        """Run an operation and roll it back: what it *would* do (the jump dialog shows this).
        Audit entries it would write are rolled back with it."""
        try:
            with self.store.transaction():
                raise _Preview(operation())
        except _Preview as done:
            return done.result

    def batch(self, operation: Callable[[], Any]) -> Any:
        """Several operations as one transaction (a multi-row drag): all happen, or none."""
        with self.store.transaction():
            result = operation()
        self.committed()
        return result

    # ------------------------------------------------------------------ reading

    @property
    def settings(self) -> EngineSettings:
        if self._settings is not None:
            return self._settings
        return EngineSettings.from_mapping(self.store.settings())

    def queue(self) -> list[JobRecord]:
        """Jobs not yet ended, in queue order: class, then the operator's order within it."""
        jobs = self.store.jobs(set(NOT_ENDED))
        return sorted(jobs, key=queue_key)

    def preemptions_today(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        midnight = _dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        with self.store.lock:
            row = self.store.conn.execute(
                "SELECT COUNT(*) FROM audit WHERE kind = 'preempt' AND ts >= ?", (midnight,)
            ).fetchone()
        return int(row[0])

    def pool_job_views(self) -> list[JobView]:
        """The policy's view of the jobs queued for, or running in, a cluster pool."""
        pools = {d.id for d in self.devices if d.kind == POOL_KIND}
        return [j for j in self._job_views() if j.device_kind in pools]

    def snapshot(self, now: float | None = None) -> Snapshot:
        now = time.time() if now is None else now
        settings = self.settings
        reserved = settings.reserved_device
        devices = tuple(
            DeviceView(d.id, d.kind, d.healthy, reserved_for_urgent=(d.id == reserved))
            for d in self.devices if d.kind != POOL_KIND
        )
        pools = {d.id for d in self.devices if d.kind == POOL_KIND}
        jobs = tuple(j for j in self._job_views() if j.device_kind not in pools)  # a cluster schedules those
        return Snapshot(jobs, devices, settings.rules(self.preemptions_today(now)), now)

    def _job_views(self) -> tuple[JobView, ...]:
        """The policy's view of every job not yet ended, read straight from the columns it needs
        (a full JobRecord per row costs ~10x more on a 10,000-job queue)."""
        marks = ", ".join("?" for _ in NOT_ENDED)
        with self.store.lock:
            rows = self.store.conn.execute(
                f"SELECT id, priority, state, queue_rank, submitted_at, waiting_since, preemptions, running_since, "
                f"device_id, progress, last_checkpoint_at, device_kind, owner FROM jobs WHERE state IN ({marks})",
                [s.value for s in NOT_ENDED],
            ).fetchall()
        priorities = {int(p): p for p in Priority}
        states = {s.value: s for s in JobState}
        views = []
        for (jid, prio, state, rank, submitted, waiting, preemptions, running_since, device_id, progress,
             checkpoint_at, device_kind, owner) in rows:
            st = states[state]
            views.append(JobView(str(jid), priorities[prio], st, rank, submitted, waiting, preemptions, running_since,
                                 device_id if st.is_active else None, progress, checkpoint_at, device_kind, owner))
        return tuple(views)

    def expected_victims(self, job_id: int) -> list[dict]:
        """Who the policy would preempt for this job right now (for the jump dialog and the audit)."""
        decision = policy.decide(self.snapshot())
        out = []
        for p in decision.preemptions:
            if p.for_job_id == str(job_id):
                victim = self.store.job(int(p.victim_id))
                out.append({**victim_details(victim), "device": p.device_id, "policy_reason": p.reason})
        return out

    # ------------------------------------------------------------------ submit

    def submit(self, **kwargs: Any) -> JobRecord:
        """Validate and enqueue (see prepare_submission for the arguments). Any problem raises
        SpecError (every problem, each with its field) and nothing is written."""
        return self.enqueue(self.prepare_submission(**kwargs))

    def prepare_submission(
        self,
        *,
        name: str,
        model: str,
        data: str,
        train_args: dict[str, Any] | None = None,
        priority: str | int | Priority = Priority.NORMAL,
        owner: str | None = None,
        device_kind: str | None = None,
        operator: str | None = None,
        reason: str | None = None,
        origin: str = "submit",
        parent_id: int | None = None,
        schedule_id: int | None = None,
        audit_kind: str | None = None,
        audit_details: dict | None = None,
    ) -> PreparedSubmission:
        """Every check a submission needs (it reads the whole dataset), and no write: callers that
        record something in the same transaction as the job (an alert, a schedule) check first and
        hold the database only for `enqueue`. An urgent submission puts work ahead of everything
        queued before it, so like any jump it needs a reason, recorded in the audit trail."""
        problems: list[Problem] = []
        try:
            fields = self.check_submission(name=name, model=model, data=data, train_args=train_args,
                                           priority=priority, owner=owner, device_kind=device_kind)
        except SpecError as e:
            problems, fields = list(e.problems), None
        urgent = fields is not None and fields["priority"] is Priority.URGENT
        operator = (operator or default_operator()).strip()
        reason = (reason or "").strip()
        kind_of_entry = audit_kind or ("jump" if urgent or _is_urgent(priority) else "submit")
        if kind_of_entry in ("jump", "emergency") and not reason:
            problems.append(Problem("reason", "an urgent job jumps the queue: give the reason (it goes into the audit trail)"))
        if problems:
            raise SpecError(problems)
        return PreparedSubmission(fields=fields, operator=operator, reason=reason, audit_kind=kind_of_entry,
                                  origin=origin, parent_id=parent_id, schedule_id=schedule_id,
                                  audit_details=dict(audit_details or {}))

    def enqueue(self, prepared: PreparedSubmission) -> JobRecord:
        """Queue a prepared submission and write its audit entry, in one transaction."""
        fields = prepared.fields
        name, owner, prio, kind = fields["name"], fields["owner"], fields["priority"], fields["device_kind"]
        model, data, args = fields["model"], fields["data"], fields["train_args"]
        with self.store.transaction():
            job = self.store.insert_job(
                name=name, owner=owner, priority=prio, state=JobState.QUEUED,
                queue_rank=self.store.max_rank(prio) + 1, model=model, data=data,
                train_args=args, device_kind=kind, origin=prepared.origin, parent_id=prepared.parent_id,
                schedule_id=prepared.schedule_id,
            )
            job = self.store.update(job.id, run_dir=str(self._new_run_dir(job.id, name)))
            details = {"name": name, "priority": prio.label, "model": job.model, "data": job.data,
                       "origin": prepared.origin, **prepared.audit_details}
            if prepared.audit_kind in ("jump", "emergency"):
                details["expected_victims"] = self.expected_victims(job.id)
                details["passed"] = [j.id for j in self.queue() if j.id != job.id and j.priority < prio]
            self.audit.append(prepared.audit_kind, operator=prepared.operator,
                              reason=prepared.reason or f"submitted by {owner}", job_id=job.id, details=details)
        self.committed()
        return job

    def _new_run_dir(self, job_id: int, name: str) -> Path:
        """runs/0012-name; a folder left by an earlier database with the same id gets a suffix, so a new
        job never picks up another job's weights or resume checkpoint."""
        base = paths.runs_dir(self.store.home) / f"{job_id:04d}-{_slug(name)}"
        candidate, n = base, 1
        while candidate.exists():
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        return candidate

    def check_submission(self, *, name: str, model: str, data: str, train_args: dict[str, Any] | None = None,
                         priority: str | int | Priority = Priority.NORMAL, owner: str | None = None,
                         device_kind: str | None = None) -> dict[str, Any]:
        """The normalised fields of a valid job, or SpecError listing every problem with its field."""
        problems: list[Problem] = []
        name = (name or "").strip() if isinstance(name, str) else ""
        if not name:
            problems.append(Problem("name", "a job needs a name"))
        elif len(name) > 120:
            problems.append(Problem("name", "keep the name under 120 characters"))
        if owner is not None and not isinstance(owner, str):
            problems.append(Problem("owner", f"the owner is a user name, got {owner!r}"))
            owner = None
        owner = (owner or "").strip() or default_operator()
        try:
            if isinstance(priority, bool):
                raise ValueError(f"unknown priority {priority!r}: expected one of urgent, high, normal, low")
            prio = Priority.parse(priority)
        except ValueError as e:
            problems.append(Problem("priority", str(e)))
            prio = Priority.NORMAL
        kind = None if device_kind in (None, "", "any") else str(device_kind).strip().lower()
        pools = sorted(d.id for d in self.devices if d.kind == POOL_KIND)
        if kind is not None and kind not in pools:
            if kind not in DEVICE_KINDS:
                options = ["any", "gpu", "cpu", *pools]
                choices = ", ".join(options[:-1]) + " or " + options[-1]
                problems.append(Problem("device", f"unknown device preference {device_kind!r}: expected {choices}"))
            elif not any(d.kind == kind for d in self.devices):
                have = ", ".join(sorted({d.id for d in self.devices})) or "none"
                problems.append(Problem("device", f"no {kind.upper()} device on this machine (devices: {have})"))
        if train_args is not None and not isinstance(train_args, dict):
            problems.append(Problem("train_args", "must be a mapping of Ultralytics train arguments"))
            train_args = {}
        args = dict(train_args or {})
        model = _absolute(str(model or "").strip())
        data = _absolute(str(data or "").strip())
        problems += check_spec(JobSpec(model=model, data=data, run_dir="", train_args=args))
        if problems:
            raise SpecError(problems)
        return {"name": name, "owner": owner, "priority": prio, "device_kind": kind, "model": model,
                "data": data, "train_args": args}

    def emergency(self, **kwargs: Any) -> JobRecord:
        """The emergency retrain (see prepare_emergency for the arguments), queued at once."""
        return self.enqueue(self.prepare_emergency(**kwargs))

    def prepare_emergency(
        self,
        *,
        reason: str,
        operator: str | None = None,
        from_job: int | None = None,
        model: str | None = None,
        data: str | None = None,
        name: str | None = None,
        train_args: dict[str, Any] | None = None,
        owner: str | None = None,
        device_kind: str | None = None,
        priority: str | int | Priority = Priority.URGENT,
        audit_details: dict | None = None,
        freeze_weights: bool = True,
    ) -> PreparedSubmission:
        """One call for the 02:10 moment: an urgent retrain that starts from a job's trained weights
        (best.pt, else last.pt) or from a model file, on a dataset (the job's own by default),
        recorded as an emergency with its reason; the engine preempts if no device is free.

        This prepares it (checks, frozen weights) without writing; `emergency` also queues it.
        Weights (.pt) are frozen first (engine.base_weights): the retrain trains from the bytes
        chosen now, whatever the source job writes later. `freeze_weights=False` is for previews."""
        source = None
        if from_job is not None:
            source = self.store.job(from_job)
        if model is None:
            if source is None:
                raise SpecError([Problem("model", "give the job to retrain from, or a model file")])
            weights = Path(source.run_dir) / "weights"
            found = [weights / n for n in ("best.pt", "last.pt") if (weights / n).is_file()]
            if not found:
                raise SpecError([Problem("model", f"job {source.id} ({source.name}) has no trained weights yet "
                                                  f"(no best.pt or last.pt in {weights}); give a model file")])
            model = str(found[0])
        frozen = {}
        if freeze_weights and isinstance(model, str) and model.lower().endswith(".pt") and expand_path(model).is_file():
            try:
                copy = base_weights.freeze(expand_path(model), self.store.home)
            except (base_weights.WeightsUnreadable, OSError) as e:
                raise SpecError([Problem("model", str(e))]) from None
            frozen = {"weights_from": str(copy.source), "weights_sha256": copy.sha256}
            model = str(copy.path)
        if data is None:
            if source is None:
                raise SpecError([Problem("data", "give the dataset to retrain on (its data.yaml)")])
            data = source.data
        args = dict(source.train_args) if source is not None else {}
        args.update(train_args or {})
        label = name or f"emergency retrain{f' of {source.name}' if source else ''}"
        urgent = _is_urgent(priority)
        return self.prepare_submission(
            name=label, model=model, data=data, train_args=args, priority=priority,
            owner=owner or operator, device_kind=device_kind if device_kind is not None else (source.device_kind if source else None),
            operator=operator, reason=reason, origin="emergency", parent_id=source.id if source else None,
            audit_kind="emergency" if urgent else "submit",
            audit_details={"from_job": source.id if source else None, "base_model": model, **frozen,
                           **(audit_details or {})},
        )

    # ------------------------------------------------------------------ order

    def move(self, job_id: int, *, before: int | None = None, after: int | None = None,
             operator: str | None = None, reason: str | None = None) -> MoveResult:
        """Put a job right before or after another one. Past a job of another class it takes that
        class. Moving up past any job is a jump (reason required); moving down is a yield."""
        if (before is None) == (after is None):
            raise OperationError("say where to move it: before a job or after a job", field="position")
        target_id = before if before is not None else after
        with self.store.transaction():
            job = self.store.job(job_id)
            target = self.store.job(target_id)
            if job.state.is_terminal:
                raise OperationError(f"job {job.id} is {job.state.value}; only jobs not yet ended can move")
            if target.state.is_terminal:
                raise OperationError(f"job {target.id} is {target.state.value}, not in the queue", field="position")
            if job.id == target.id:
                return MoveResult(job, "none", ())
            order = [j for j in self.queue() if j.id != job.id]
            old = [j.id for j in self.queue()]
            index = next(i for i, j in enumerate(order) if j.id == target.id) + (0 if before is not None else 1)
            new_priority = target.priority
            new_order = [j.id for j in order[:index]] + [job.id] + [j.id for j in order[index:]]
            result = self._reorder(job, new_priority, old, new_order, operator, reason, "move")
        self.committed()
        return result

    def jump(self, job_id: int, *, reason: str, operator: str | None = None) -> MoveResult:
        """Jump the queue: the job becomes urgent and first in line (preempting if no device is free)."""
        with self.store.transaction():
            job = self.store.job(job_id)
            if job.state.is_terminal:
                raise OperationError(f"job {job.id} is {job.state.value}; only jobs not yet ended can jump")
            old = [j.id for j in self.queue()]
            new_order = [job.id] + [i for i in old if i != job.id]
            result = self._reorder(job, Priority.URGENT, old, new_order, operator, reason, "jump")
        self.committed()
        return result

    def set_priority(self, job_id: int, priority: str | int | Priority, *, operator: str | None = None,
                     reason: str | None = None) -> MoveResult:
        """Change the class; the job joins the end of its new class. Raising is a jump."""
        try:
            prio = Priority.parse(priority)
        except ValueError as e:
            raise OperationError(str(e), field="priority") from None
        with self.store.transaction():
            job = self.store.job(job_id)
            if job.state.is_terminal:
                raise OperationError(f"job {job.id} is {job.state.value}; its priority no longer matters")
            if prio == job.priority:
                return MoveResult(job, "none", ())
            old = [j.id for j in self.queue()]
            rest = [j for j in self.queue() if j.id != job.id]
            # End of the new class: after the last job whose class is >= the new one.
            index = sum(1 for j in rest if j.priority >= prio)
            new_order = [j.id for j in rest[:index]] + [job.id] + [j.id for j in rest[index:]]
            result = self._reorder(job, prio, old, new_order, operator, reason, "priority")
        self.committed()
        return result

    def _reorder(self, job: JobRecord, priority: Priority, old: list[int], new: list[int],
                 operator: str | None, reason: str | None, via: str) -> MoveResult:
        old_pos, new_pos = old.index(job.id), new.index(job.id)
        passed_up = tuple(i for i in old[:old_pos] if i not in new[:new_pos])
        passed_down = tuple(i for i in old[old_pos + 1:] if i in new[:new_pos])
        raised = priority > job.priority
        is_jump = bool(passed_up) or raised
        operator = (operator or default_operator()).strip()
        reason = (reason or "").strip()
        if is_jump and not reason:
            raise OperationError("this puts the job ahead of earlier work: give the reason (it goes into the "
                                 "audit trail)", field="reason")
        if not is_jump and not passed_down and priority == job.priority:
            return MoveResult(job, "none", ())
        # Ranks follow the new order within each class (only the affected class is renumbered).
        self.store.update(job.id, priority=priority)
        jobs = {j.id: j for j in self.queue()}
        for rank, jid in enumerate(i for i in new if jobs[i].priority == priority):
            if jobs[jid].queue_rank != rank or jid == job.id:
                self.store.update(jid, queue_rank=rank)
        moved = self.store.job(job.id)
        details = {
            "via": via, "name": job.name, "from_position": old_pos + 1, "to_position": new_pos + 1,
            "from_priority": job.priority.label, "to_priority": priority.label,
        }
        if is_jump:
            details["passed"] = list(passed_up)
            details["expected_victims"] = self.expected_victims(job.id)
            kind = "priority" if via == "priority" else "jump"
            self.audit.append(kind, operator=operator, reason=reason, job_id=job.id, details=details)
            return MoveResult(moved, "jump", passed_up, details)
        details["passed"] = list(passed_down)
        self.audit.append("yield", operator=operator, reason=reason or "moved down", job_id=job.id, details=details)
        return MoveResult(moved, "yield", passed_down, details)

    # ------------------------------------------------------------------ settings

    def change_settings(self, values: dict[str, Any], *, operator: str | None = None,
                        reason: str | None = None) -> dict[str, dict[str, Any]]:
        """Validate and store new settings with an audit entry; returns {key: {from, to}} of what
        changed. Any problem raises SpecError (field = the setting) and nothing is written."""
        known = [f.name for f in dataclasses.fields(EngineSettings)]
        problems = []
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                problems.append(Problem(key, f"unknown setting{f' (did you mean {close[0]!r}?)' if close else ''}"))
        if problems:
            raise SpecError(problems)
        stored = self.store.settings()
        current = EngineSettings.from_mapping(stored)
        candidate = dataclasses.replace(current, **values)
        problems = [Problem(*p.split(": ", 1)) for p in candidate.problems()]
        device_ids = {d.id for d in self.devices}
        if candidate.reserved_device is not None and candidate.reserved_device not in device_ids:
            problems.append(Problem("reserved_device", f"no device {candidate.reserved_device!r} here "
                                                       f"(devices: {', '.join(sorted(device_ids)) or 'none'})"))
        if problems:
            raise SpecError(problems)
        old = current.to_dict()
        changed = {k: {"from": old[k], "to": v} for k, v in values.items() if old[k] != v or k not in stored}
        if changed:
            operator = (operator or default_operator()).strip()
            with self.store.transaction():
                self.store.put_settings({k: c["to"] for k, c in changed.items()})
                self.audit.append("settings", operator=operator,
                                  reason=(reason or "").strip() or f"settings changed by {operator}",
                                  details={"changed": changed})
            self.committed()
        return changed

    # ------------------------------------------------------------------ hold, stop, retry

    def pause(self, job_id: int, *, operator: str | None = None, reason: str | None = None) -> JobRecord:
        return self._stop_or_hold(job_id, JobState.PAUSED, JobEvent.PAUSE, "pause", operator, reason)

    def cancel(self, job_id: int, *, operator: str | None = None, reason: str | None = None) -> JobRecord:
        return self._stop_or_hold(job_id, JobState.CANCELLED, JobEvent.CANCEL, "cancel", operator, reason)

    def _stop_or_hold(self, job_id: int, target: JobState, event: JobEvent, kind: str,
                      operator: str | None, reason: str | None) -> JobRecord:
        operator = (operator or default_operator()).strip()
        reason = (reason or "").strip() or f"{kind} by {operator}"
        with self.store.transaction():
            job = self.store.job(job_id)
            if job.state in (JobState.QUEUED, JobState.PAUSED):
                if job.state is target:
                    return job
                if job.state is JobState.PAUSED and target is JobState.PAUSED:
                    return job
                done = self.store.transition(job.id, event, expect=job.state, detail=reason,
                                             ended_at=time.time() if target is JobState.CANCELLED else None)
            elif job.state in (JobState.STARTING, JobState.RUNNING):
                done = self.store.transition(job.id, event, expect=job.state, detail=reason,
                                             stop_target=target.value, stop_reason=reason)
            elif job.state is JobState.PREEMPTING:
                done = self.store.update(job.id, stop_target=target.value, stop_reason=reason)
            else:
                raise OperationError(f"job {job.id} is {job.state.value}; nothing to {kind}")
            self.audit.append(kind, operator=operator, reason=reason, job_id=job.id,
                              details={"name": job.name, "state_before": job.state.value})
        self.committed()
        return done

    def resume(self, job_id: int, *, operator: str | None = None) -> JobRecord:
        """A paused job goes back to its place (its class and operator order are unchanged)."""
        operator = (operator or default_operator()).strip()
        with self.store.transaction():
            job = self.store.job(job_id)
            if job.state is JobState.PREEMPTING and job.stop_target == JobState.PAUSED.value:
                done = self.store.update(job.id, stop_target=JobState.QUEUED.value)  # changed mind mid-stop
            elif job.state is JobState.PAUSED:
                done = self.store.transition(job.id, JobEvent.RESUME, expect=JobState.PAUSED,
                                             detail=f"resumed by {operator}", waiting_since=time.time())
            else:
                raise OperationError(f"job {job.id} is {job.state.value}, not paused")
            self.audit.append("resume", operator=operator, reason=f"resumed by {operator}", job_id=job.id,
                              details={"name": job.name})
        self.committed()
        return done

    def retry(self, job_id: int, *, operator: str | None = None) -> JobRecord:
        """A failed job goes back into the queue and resumes from its last checkpoint, if any."""
        operator = (operator or default_operator()).strip()
        with self.store.transaction():
            job = self.store.job(job_id)
            if job.state is not JobState.FAILED:
                raise OperationError(f"job {job.id} is {job.state.value}; only a failed job can be retried")
            done = self.store.transition(job.id, JobEvent.RETRY, expect=JobState.FAILED,
                                         detail=f"retried by {operator}", waiting_since=time.time(),
                                         error=None, ended_at=None, lost_workers=0)
            checkpoint = Path(job.run_dir) / "weights" / "resume.pt"
            self.audit.append("retry", operator=operator, reason=f"retried by {operator}", job_id=job.id,
                              details={"name": job.name, "resumes_from": str(checkpoint) if checkpoint.exists() else None})
        self.committed()
        return done


# ---------------------------------------------------------------------- helpers


def queue_key(job: JobRecord) -> tuple:
    return (-int(job.priority), job.queue_rank, job.submitted_at, job.id)


def job_view(job: JobRecord) -> JobView:
    return JobView(
        id=str(job.id),
        priority=job.priority,
        state=job.state,
        queue_rank=job.queue_rank,
        submitted_at=job.submitted_at,
        waiting_since=job.waiting_since,
        preemptions=job.preemptions,
        running_since=job.running_since,
        device_id=job.device_id if job.state.is_active else None,
        progress=job.progress,
        last_checkpoint_at=job.last_checkpoint_at,
        device_kind=job.device_kind,
        owner=job.owner,
    )


def victim_details(job: JobRecord) -> dict:
    return {
        "job": job.id, "name": job.name, "owner": job.owner, "priority": job.priority.label,
        "epoch": job.epoch, "epochs": job.epochs, "batch": job.batch, "batches": job.batches,
        "progress": round(job.progress, 4), "checkpoint": job.checkpoint,
        "last_checkpoint_at": job.last_checkpoint_at,
    }


def _is_urgent(priority: Any) -> bool:
    try:
        return Priority.parse(priority) is Priority.URGENT
    except ValueError:
        return False


def _absolute(path: str) -> str:
    """Files are stored absolute (the worker runs elsewhere); built-in model names stay as given."""
    if not path:
        return path
    candidate = expand_path(path)
    try:
        if candidate.exists():
            return str(candidate.resolve())
    except (OSError, ValueError):
        pass
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "job"
