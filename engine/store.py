"""The engine's state on disk: one SQLite database (WAL) under Cutline's home.

Jobs, their queue order, every state transition, owner notifications, cron schedules and settings
live here, next to the audit trail (`engine.audit`, same database). The store is the source of
truth: a command from the CLI in another process is a transaction here, and the running engine
sees it within one tick (`changed()` reads SQLite's `data_version`, which moves when any other
connection commits). Every state change is a compare-and-set on the job's current state, written
with its transition row in one transaction, *before* the engine acts on it.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .jobs import IllegalTransition, JobEvent, JobState, Priority, next_state

DB_FILE = "cutline.db"
AUDIT_ANCHOR_FILE = "audit.anchor"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT    NOT NULL,
    owner              TEXT    NOT NULL,
    priority           INTEGER NOT NULL,
    state              TEXT    NOT NULL,
    queue_rank         INTEGER NOT NULL,
    submitted_at       REAL    NOT NULL,
    waiting_since      REAL    NOT NULL,
    model              TEXT    NOT NULL,
    data               TEXT    NOT NULL,
    train_args         TEXT    NOT NULL,
    device_kind        TEXT,
    run_dir            TEXT    NOT NULL,
    origin             TEXT    NOT NULL DEFAULT 'submit',
    parent_id          INTEGER,
    schedule_id        INTEGER,
    stop_target        TEXT,
    stop_reason        TEXT,
    stop_sent_at       REAL,
    stop_deadline      REAL,
    killed_at          REAL,
    device_id          TEXT,
    running_since      REAL,
    gated              INTEGER NOT NULL DEFAULT 0,
    worker             TEXT,
    events_offset      INTEGER NOT NULL DEFAULT 0,
    preemptions        INTEGER NOT NULL DEFAULT 0,
    attempts           INTEGER NOT NULL DEFAULT 0,
    lost_workers       INTEGER NOT NULL DEFAULT 0,
    epoch              INTEGER,
    epochs             INTEGER,
    batch              INTEGER,
    batches            INTEGER,
    progress           REAL    NOT NULL DEFAULT 0,
    metrics            TEXT,
    last_checkpoint_at REAL,
    checkpoint         TEXT,
    error              TEXT,
    ended_at           REAL,
    updated_at         REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS transitions (
    seq        INTEGER PRIMARY KEY,
    ts         REAL    NOT NULL,
    job_id     INTEGER NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    detail     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions(job_id);
CREATE TABLE IF NOT EXISTS notifications (
    seq     INTEGER PRIMARY KEY,
    ts      REAL    NOT NULL,
    owner   TEXT    NOT NULL,
    job_id  INTEGER,
    kind    TEXT    NOT NULL,
    message TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT    NOT NULL,
    cron           TEXT    NOT NULL,
    timezone       TEXT    NOT NULL,
    template       TEXT    NOT NULL,
    enabled        INTEGER NOT NULL DEFAULT 1,
    created_at     REAL    NOT NULL,
    last_fired_at  REAL
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alert_events (
    seq         INTEGER PRIMARY KEY,
    ts          REAL    NOT NULL,
    fingerprint TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    alertname   TEXT    NOT NULL,
    labels      TEXT    NOT NULL,
    annotations TEXT    NOT NULL,
    starts_at   TEXT,
    rule        TEXT,
    action      TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    job_id      INTEGER,
    operator    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_events_fingerprint ON alert_events(fingerprint);
"""

# Columns a caller may set through `update`/`transition` (everything but the identity).
_MUTABLE = {
    "name", "owner", "priority", "queue_rank", "waiting_since", "model", "data", "train_args", "device_kind",
    "stop_target", "stop_reason", "stop_sent_at", "stop_deadline", "killed_at", "device_id", "running_since",
    "gated", "worker", "events_offset", "preemptions", "attempts", "lost_workers", "epoch", "epochs", "batch",
    "batches", "progress", "metrics", "last_checkpoint_at", "checkpoint", "error", "ended_at", "run_dir",
}
_JSON_COLUMNS = {"train_args", "worker", "metrics"}


@dataclasses.dataclass(frozen=True)
class JobRecord:
    id: int
    name: str
    owner: str
    priority: Priority
    state: JobState
    queue_rank: int
    submitted_at: float
    waiting_since: float
    model: str
    data: str
    train_args: dict
    device_kind: str | None
    run_dir: str
    origin: str
    parent_id: int | None
    schedule_id: int | None
    stop_target: str | None
    stop_reason: str | None
    stop_sent_at: float | None
    stop_deadline: float | None
    killed_at: float | None
    device_id: str | None
    running_since: float | None
    gated: bool
    worker: dict | None
    events_offset: int
    preemptions: int
    attempts: int
    lost_workers: int
    epoch: int | None
    epochs: int | None
    batch: int | None
    batches: int | None
    progress: float
    metrics: dict | None
    last_checkpoint_at: float | None
    checkpoint: str | None
    error: str | None
    ended_at: float | None
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["priority"] = self.priority.label
        out["state"] = self.state.value
        return out


_FIELDS = [f.name for f in dataclasses.fields(JobRecord)]


def _record(row: sqlite3.Row) -> JobRecord:
    values = dict(zip(row.keys(), row))
    for key in _JSON_COLUMNS:
        if values[key] is not None:
            values[key] = json.loads(values[key])
    values["priority"] = Priority(values["priority"])
    values["state"] = JobState(values["state"])
    values["gated"] = bool(values["gated"])
    return JobRecord(**{k: values[k] for k in _FIELDS})


class StaleState(RuntimeError):
    """The job was not in the state the change expected (another actor changed it first)."""


class UnknownJob(LookupError):
    pass


@dataclasses.dataclass(frozen=True)
class Notification:
    seq: int
    ts: float
    owner: str
    job_id: int | None
    kind: str
    message: str


@dataclasses.dataclass(frozen=True)
class Schedule:
    id: int
    name: str
    cron: str
    timezone: str
    template: dict
    enabled: bool
    created_at: float
    last_fired_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Store:
    """Thread-safe access to the database: one connection, one lock, short transactions."""

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / DB_FILE
        self.anchor_path = self.home / AUDIT_ANCHOR_FILE
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), never implicit.
        self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._savepoints = 0  # depth of nested transaction() blocks
        self.conn.row_factory = sqlite3.Row
        self.lock = threading.RLock()
        with self.lock:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")  # a committed transition survives power loss
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(_SCHEMA)
            self.conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),)
            )
        self._seen: dict[str, int] = {"engine": self._read_data_version()}

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def audit_trail(self):
        """The audit trail in this database, guarded by this store's lock."""
        from .audit import AuditTrail

        with self.lock:
            return AuditTrail(self.conn, self.anchor_path, lock=self.lock)

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error). Nested use is a SAVEPOINT inside the outer
        transaction: an inner failure undoes only the inner work, and the outer one decides the rest."""
        with self.lock:
            if self.conn.in_transaction:
                self._savepoints += 1
                name = f"nested_{self._savepoints}"
                self.conn.execute(f"SAVEPOINT {name}")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute(f"ROLLBACK TO {name}")
                    self.conn.execute(f"RELEASE {name}")
                    raise
                finally:
                    self._savepoints -= 1
                self.conn.execute(f"RELEASE {name}")
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                # A COMMIT that failed (disk full, I/O error) may leave the transaction open: every later
                # transaction() would then join it as if nested and never commit.
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def _read_data_version(self) -> int:
        with self.lock:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def changed(self, reader: str = "engine") -> bool:
        """True if another connection (the CLI, another process) committed since this reader's
        last call. Each reader (the engine loop, the console) keeps its own mark."""
        version = self._read_data_version()
        if version != self._seen.get(reader):
            self._seen[reader] = version
            return True
        return False

    # ------------------------------------------------------------------ jobs

    def insert_job(self, **values: Any) -> JobRecord:
        now = time.time()
        values.setdefault("submitted_at", now)
        values.setdefault("waiting_since", values["submitted_at"])
        values.setdefault("updated_at", now)
        values.setdefault("run_dir", "")
        values["priority"] = int(values["priority"])
        values["state"] = JobState(values.get("state", JobState.QUEUED)).value
        for key in _JSON_COLUMNS & values.keys():
            values[key] = None if values[key] is None else json.dumps(values[key], sort_keys=True)
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self.transaction() as conn:
            cur = conn.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(values.values()))
            return self.job(cur.lastrowid)

    def job(self, job_id: int | str) -> JobRecord:
        with self.lock:
            row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (_job_id(job_id),)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        return _record(row)

    def jobs(self, states: set[JobState] | None = None) -> list[JobRecord]:
        with self.lock:
            if states:
                marks = ", ".join("?" for _ in states)
                rows = self.conn.execute(
                    f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", [s.value for s in states]
                ).fetchall()
            else:
                rows = self.conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return [_record(r) for r in rows]

    def update(self, job_id: int, **values: Any) -> JobRecord:
        """Change fields that are not the state (progress, metrics, worker record, ranks)."""
        with self.transaction():
            self._update(job_id, values)
            return self.job(job_id)

    def _update(self, job_id: int, values: dict[str, Any], expect: JobState | None = None) -> None:
        bad = set(values) - _MUTABLE - {"state"}
        if bad:
            raise ValueError(f"cannot set {', '.join(sorted(bad))}")
        values = dict(values, updated_at=time.time())
        for key in _JSON_COLUMNS & values.keys():
            values[key] = None if values[key] is None else json.dumps(values[key], sort_keys=True)
        if "priority" in values:
            values["priority"] = int(values["priority"])
        if "state" in values:
            values["state"] = JobState(values["state"]).value
        assignments = ", ".join(f"{k} = ?" for k in values)
        params = list(values.values()) + [job_id]
        where = "id = ?"
        if expect is not None:
            where += " AND state = ?"
            params.append(expect.value)
        cur = self.conn.execute(f"UPDATE jobs SET {assignments} WHERE {where}", params)
        if cur.rowcount != 1:
            current = self.conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if current is None:
                raise UnknownJob(f"no job {job_id}")
            raise StaleState(f"job {job_id} is {current[0]}, not {expect.value if expect else '?'}")

    def transition(
        self,
        job_id: int,
        event: JobEvent,
        *,
        expect: JobState,
        to: JobState | None = None,
        detail: str = "",
        **values: Any,
    ) -> JobRecord:
        """Move a job from `expect` by `event` (to `to` where the table leaves it to the engine),
        set `values`, and record the transition, in one transaction. Raises StaleState if the job
        is no longer in `expect`, IllegalTransition if the table forbids the event."""
        target = next_state(expect, event)
        if to is not None and to is not target:
            # A stopped worker lands where its stop asked: back in the queue, held, or cancelled.
            if target is not JobState.QUEUED or to not in (JobState.PAUSED, JobState.CANCELLED):
                raise IllegalTransition(f"{event.value} from {expect.value} leads to {target.value}, not {to.value}")
            target = to
        with self.transaction() as conn:
            self._update(job_id, dict(values, state=target), expect=expect)
            conn.execute(
                "INSERT INTO transitions (ts, job_id, from_state, to_state, event, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), job_id, expect.value, target.value, event.value, detail),
            )
            return self.job(job_id)

    def transitions(self, job_id: int | None = None) -> list[dict]:
        with self.lock:
            if job_id is None:
                rows = self.conn.execute("SELECT * FROM transitions ORDER BY seq").fetchall()
            else:
                rows = self.conn.execute(
                    "SELECT * FROM transitions WHERE job_id = ? ORDER BY seq", (_job_id(job_id),)
                ).fetchall()
        return [dict(zip(r.keys(), r)) for r in rows]

    def max_rank(self, priority: Priority) -> int:
        with self.lock:
            row = self.conn.execute(
                "SELECT MAX(queue_rank) FROM jobs WHERE priority = ?", (int(priority),)
            ).fetchone()
        return -1 if row[0] is None else int(row[0])

    # ------------------------------------------------------------------ notifications

    def notify(self, owner: str, job_id: int | None, kind: str, message: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO notifications (ts, owner, job_id, kind, message) VALUES (?, ?, ?, ?, ?)",
                (time.time(), owner, job_id, kind, message),
            )

    def notifications(self, owner: str | None = None, after_seq: int = 0) -> list[Notification]:
        sql = "SELECT seq, ts, owner, job_id, kind, message FROM notifications WHERE seq > ?"
        params: list[Any] = [after_seq]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        with self.lock:
            rows = self.conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [Notification(*r) for r in rows]

    # ------------------------------------------------------------------ schedules

    def add_schedule(self, name: str, cron: str, timezone: str, template: dict) -> Schedule:
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO schedules (name, cron, timezone, template, enabled, created_at) VALUES (?, ?, ?, ?, 1, ?)",
                (name, cron, timezone, json.dumps(template, sort_keys=True), time.time()),
            )
            return self.schedule(cur.lastrowid)

    def schedule(self, schedule_id: int | str) -> Schedule:
        with self.lock:
            row = self.conn.execute("SELECT * FROM schedules WHERE id = ?", (_job_id(schedule_id),)).fetchone()
        if row is None:
            raise UnknownJob(f"no schedule {schedule_id}")
        return _schedule(row)

    def schedules(self) -> list[Schedule]:
        with self.lock:
            rows = self.conn.execute("SELECT * FROM schedules ORDER BY id").fetchall()
        return [_schedule(r) for r in rows]

    def set_schedule_fields(self, schedule_id: int, **values: Any) -> None:
        allowed = {"enabled", "last_fired_at"}
        if set(values) - allowed:
            raise ValueError(f"cannot set {', '.join(sorted(set(values) - allowed))}")
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as conn:
            conn.execute(f"UPDATE schedules SET {assignments} WHERE id = ?", [*values.values(), schedule_id])

    def delete_schedule(self, schedule_id: int) -> None:
        with self.transaction() as conn:
            if conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,)).rowcount != 1:
                raise UnknownJob(f"no schedule {schedule_id}")

    # ------------------------------------------------------------------ meta

    def meta(self, key: str) -> Any:
        with self.lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_meta(self, key: str, value: Any) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         (key, json.dumps(value)))

    # ------------------------------------------------------------------ settings

    def settings(self) -> dict[str, Any]:
        with self.lock:
            rows = self.conn.execute("SELECT key, value FROM settings").fetchall()
        return {k: json.loads(v) for k, v in rows}

    def put_settings(self, values: dict[str, Any]) -> None:
        with self.transaction() as conn:
            for key, value in values.items():
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)),
                )


def _schedule(row: sqlite3.Row) -> Schedule:
    values = dict(zip(row.keys(), row))
    values["template"] = json.loads(values["template"])
    values["enabled"] = bool(values["enabled"])
    return Schedule(**values)


def _job_id(job_id: int | str) -> int:
    try:
        return int(job_id)
    except (TypeError, ValueError):
        raise UnknownJob(f"no job {job_id!r}: job ids are numbers") from None
