"""Time-driven work, on APScheduler: cron-scheduled retrains, periodic safety checkpoints, aging
and the daily preemption cap's reset.

Schedules persist in the store (table `schedules`), not in an APScheduler job store: the store is
already the one source of truth the CLI and console write to, and a schedule added from the CLI
while the engine runs is picked up at the next sync (every few seconds). A run missed while
Cutline was closed fires once at the next start if it is less than `MISFIRE_GRACE_S` old, and
never more than once however many were missed (coalesced).

Timer callbacks run on APScheduler's thread: they only write to the store or set a flag and wake
the engine, which does the rest on its own thread.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .jobs import Priority
from .spec import Problem, SpecError
from .store import Schedule, Store

if TYPE_CHECKING:
    from .core import Engine

log = logging.getLogger("cutline.timers")

MISFIRE_GRACE_S = 6 * 3600.0
SCHEDULE_SYNC_S = 2.0
TEMPLATE_KEYS = {"name", "model", "data", "train_args", "priority", "owner", "device_kind"}


def parse_cron(expression: str, timezone: str | None = None) -> CronTrigger:
    """A standard 5-field crontab line ("0 2 * * *" = 02:00 daily); SpecError names the problem."""
    try:
        return CronTrigger.from_crontab(expression.strip(), timezone=timezone or local_timezone())
    except (ValueError, TypeError) as e:
        raise SpecError([Problem("cron", f"not a valid crontab line {expression!r} (minute hour day month "
                                         f"weekday, e.g. '0 2 * * *'): {e}")]) from None


def local_timezone() -> str:
    try:
        import tzlocal  # APScheduler's own dependency

        return tzlocal.get_localzone_name() or "UTC"
    except Exception:
        return "UTC"


def next_fire(schedule: Schedule, after: float) -> float | None:
    trigger = parse_cron(schedule.cron, schedule.timezone)
    start = _dt.datetime.fromtimestamp(after, _dt.timezone.utc)
    fire = trigger.get_next_fire_time(None, start + _dt.timedelta(microseconds=1))
    return None if fire is None else fire.timestamp()


def add_schedule(store: Store, ops, *, name: str, cron: str, template: dict, timezone: str | None = None,
                 operator: str | None = None) -> Schedule:
    """Validate a schedule like a submission (the template must be a valid job) and store it."""
    unknown = set(template) - TEMPLATE_KEYS
    if unknown:
        raise SpecError([Problem("template", f"unknown fields: {', '.join(sorted(unknown))}")])
    tz = timezone or local_timezone()
    parse_cron(cron, tz)
    fields = ops.check_submission(**{k: v for k, v in template.items() if k in TEMPLATE_KEYS})
    if fields["priority"] is Priority.URGENT:
        raise SpecError([Problem("priority", "a scheduled job cannot be urgent (a jump needs a person and a reason)")])
    # Stored as checked: absolute paths (the engine fires it from elsewhere), owner fixed now.
    template = {**fields, "priority": fields["priority"].label}
    with store.transaction():
        schedule = store.add_schedule(name.strip() or template.get("name", "schedule"), cron.strip(), tz, template)
        ops.audit.append("schedule", operator=operator or ops_operator(), reason=f"added schedule {schedule.name}",
                         details={"schedule": schedule.id, "cron": schedule.cron, "timezone": tz, "template": template})
    with store.lock:
        ops.audit.flush_anchor()
    return schedule


def remove_schedule(store: Store, ops, schedule_id: int | str, operator: str | None = None) -> Schedule:
    with store.transaction():
        schedule = store.schedule(schedule_id)
        store.delete_schedule(schedule.id)
        ops.audit.append("schedule", operator=operator or ops_operator(), reason=f"removed schedule {schedule.name}",
                         details={"schedule": schedule.id, "cron": schedule.cron, "removed": True})
    with store.lock:
        ops.audit.flush_anchor()
    return schedule


def ops_operator() -> str:
    from .operations import default_operator

    return default_operator()


class Timers:
    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1})
        self._known: dict[int, tuple[str, str, bool]] = {}

    def start(self) -> None:
        settings = self.engine.settings
        s = self.scheduler
        self.set_safety_interval(settings.safety_checkpoint_interval_s)
        if settings.aging_interval_s > 0:
            # Aging is computed from waiting time at every decision; this tick makes sure a
            # decision happens when a job crosses an aging step even if nothing else changes.
            s.add_job(self.engine.wake, IntervalTrigger(seconds=max(1.0, min(60.0, settings.aging_interval_s / 4))),
                      id="aging", name="aging")
        s.add_job(self._cap_reset, CronTrigger(hour=0, minute=0), id="cap-reset", name="daily preemption cap reset")
        s.add_job(self.sync_schedules, IntervalTrigger(seconds=SCHEDULE_SYNC_S), id="schedule-sync", name="schedule sync")
        self.catch_up(time.time())
        self.sync_schedules()
        s.start()

    def set_safety_interval(self, seconds: float) -> None:
        """(Re)schedule the periodic safety checkpoints; <= 0 turns them off."""
        if self.scheduler.get_job("safety-checkpoints") is not None:
            self.scheduler.remove_job("safety-checkpoints")
        if seconds > 0:
            self.scheduler.add_job(self.engine.request_safety_checkpoints, IntervalTrigger(seconds=seconds),
                                   id="safety-checkpoints", name="periodic safety checkpoints")

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)  # a run being submitted finishes before the store closes

    def _cap_reset(self) -> None:
        # preemptions_today counts audit entries since local midnight: at midnight it is 0 again.
        log.info("daily preemption cap reset")
        self.engine.wake()

    def catch_up(self, now: float) -> list[int]:
        """Fire once, now, each schedule whose latest due time passed while Cutline was closed
        (if that is less than MISFIRE_GRACE_S ago; older misses are skipped, not replayed)."""
        fired = []
        for schedule in self.engine.store.schedules():
            if not schedule.enabled:
                continue
            due = next_fire(schedule, schedule.last_fired_at or schedule.created_at)
            if due is None or due > now:
                continue
            for _ in range(100_000):  # the latest due time <= now (a week of a per-minute cron is 10k)
                following = next_fire(schedule, due)
                if following is None or following > now:
                    break
                due = following
            if now - due <= MISFIRE_GRACE_S:
                log.info("schedule %s missed its run at %s; running it now", schedule.id, due)
                self.fire(schedule.id, due=due)
                fired.append(schedule.id)
            else:
                self.engine.store.set_schedule_fields(schedule.id, last_fired_at=now)  # too old: skip it
        return fired

    def sync_schedules(self) -> None:
        """Make APScheduler's jobs match the store's schedules (added, removed, changed)."""
        current = {s.id: s for s in self.engine.store.schedules()}
        for sid in set(self._known) - set(current):
            self._remove(sid)
        for sid, schedule in current.items():
            key = (schedule.cron, schedule.timezone, schedule.enabled)
            if self._known.get(sid) == key:
                continue
            self._remove(sid)
            if schedule.enabled:
                try:
                    trigger = parse_cron(schedule.cron, schedule.timezone)
                except SpecError as e:
                    log.error("schedule %s: %s", sid, e)
                    continue
                self.scheduler.add_job(self.fire, trigger, args=[sid], id=f"schedule-{sid}",
                                       name=schedule.name, misfire_grace_time=int(MISFIRE_GRACE_S))
            self._known[sid] = key

    def _remove(self, sid: int) -> None:
        self._known.pop(sid, None)
        if self.scheduler.get_job(f"schedule-{sid}") is not None:
            self.scheduler.remove_job(f"schedule-{sid}")

    def fire(self, schedule_id: int, due: float | None = None) -> None:
        store = self.engine.store
        try:
            schedule = store.schedule(schedule_id)
        except LookupError:
            return
        when = time.time()
        template = dict(schedule.template)
        stamp = _dt.datetime.fromtimestamp(due or when).strftime("%Y-%m-%d %H:%M")
        try:
            # Checked first (the whole dataset is read), outside the transaction that holds the database.
            prepared = self.engine.ops.prepare_submission(
                name=f"{template.get('name') or schedule.name} ({stamp})",
                model=template["model"], data=template["data"], train_args=template.get("train_args") or {},
                priority=template.get("priority", "normal"), owner=template.get("owner"),
                device_kind=template.get("device_kind"), origin="schedule", schedule_id=schedule.id,
                operator=f"schedule:{schedule.name}",
            )
            with store.transaction():  # marked fired if and only if its job is queued
                store.set_schedule_fields(schedule.id, last_fired_at=when)
                job = self.engine.ops.enqueue(prepared)
            self.engine.ops.committed()
            log.info("schedule %s submitted job %s", schedule.id, job.id)
        except Exception as e:  # the dataset moved, say: tell the owner, keep the schedule
            log.error("schedule %s could not submit: %s", schedule.id, e)
            store.set_schedule_fields(schedule.id, last_fired_at=when)  # tried; the next run comes at its time
            store.notify(template.get("owner") or "", None, "failed",
                         f"Scheduled retrain '{schedule.name}' could not be submitted: {e}")
        self.engine.wake()

    def next_runs(self) -> dict[int, float | None]:
        out = {}
        for schedule in self.engine.store.schedules():
            job = self.scheduler.get_job(f"schedule-{schedule.id}")
            out[schedule.id] = job.next_run_time.timestamp() if job is not None and job.next_run_time else None
        return out
