"""The audit trail: who jumped which job ahead of whom, when, and why. Append-only, tamper-evident.

Each entry carries the SHA-256 of the one before it, so editing any field of a written entry,
deleting one, or swapping two breaks the chain at a point `verify()` names. Deleting the *last*
entries leaves an intact (shorter) chain, so the head of the chain (last seq and its hash) is also
anchored outside the `audit` table: in a one-row `audit_anchor` table, written in the same
transaction as the entry, and, when an `anchor_path` is given, in a small file next to the
database. New entries chain onto the anchored head, not onto whatever row happens to be last, so a
truncated tail stays visible as a gap even after later appends.

What this does not do: someone who can write the database *and* the anchor file can recompute the
whole chain. The trail makes accidental or casual edits evident; it is not a signature.

The table is plain SQLite (stdlib `sqlite3`); `append` works inside a caller's transaction, so a
jump and the entry that justifies it commit (or roll back) together.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "GENESIS_HASH",
    "JUMP_KINDS",
    "KINDS",
    "AuditEntry",
    "AuditTrail",
    "AuditVerification",
]

GENESIS_HASH = "0" * 64

#: Actions that put a job ahead of work submitted before it. Each needs an operator and a reason,
#: recorded before the action happens. ("priority" is a *raise*; lowering a priority is a "yield".)
JUMP_KINDS: frozenset[str] = frozenset({"jump", "emergency", "priority"})

#: Every kind the trail accepts. A fixed vocabulary: a misspelt jump kind must not slip past the
#: reason check as an unknown kind.
KINDS: frozenset[str] = JUMP_KINDS | frozenset(
    {"yield", "preempt", "requeue", "cancel", "pause", "resume", "retry", "submit", "schedule", "settings"}
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    ts        REAL    NOT NULL,
    kind      TEXT    NOT NULL,
    operator  TEXT    NOT NULL,
    reason    TEXT    NOT NULL,
    job_id    TEXT,
    details   TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_job ON audit(job_id);
CREATE TABLE IF NOT EXISTS audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
"""

_COLUMNS = "seq, ts, kind, operator, reason, job_id, details, prev_hash, hash"
_CSV_FIELDS = ["seq", "time_utc", "ts", "kind", "operator", "reason", "job_id", "details", "prev_hash", "hash"]


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: float
    kind: str
    operator: str
    reason: str
    job_id: str | None
    details: dict[str, Any] = dataclasses.field(hash=False)
    prev_hash: str
    hash: str

    @property
    def is_jump(self) -> bool:
        return self.kind in JUMP_KINDS

    @property
    def time_utc(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.ts, tz=_dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class AuditVerification:
    ok: bool
    checked: int
    problems: list[str] = dataclasses.field(default_factory=list, hash=False)

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        if self.ok:
            return f"audit trail intact ({self.checked} entries checked)"
        return f"audit trail damaged ({self.checked} entries checked): " + "; ".join(self.problems)


def canonical_json(value: Any) -> str:
    """The one JSON spelling used for `details` and for hashing: sorted keys, no spaces, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(prev_hash: Any, seq: Any, ts: Any, kind: Any, operator: Any, reason: Any,
               job_id: Any, details: Any) -> str:
    """SHA-256 over the previous hash and the canonical serialization of one entry's fields.

    `details` is the stored JSON *text*, hashed as text, so the hash covers exactly what is stored.
    """
    payload = canonical_json([seq, ts, kind, operator, reason, job_id, details])
    return hashlib.sha256(f"{prev_hash}\n{payload}".encode("utf-8")).hexdigest()


def _row_hash(row: tuple, *, seq: Any = None, prev_hash: Any = None) -> str | None:
    """Recompute a stored row's hash (optionally as if it had another seq / predecessor)."""
    r_seq, ts, kind, operator, reason, job_id, details, r_prev, _ = row
    try:
        return entry_hash(r_prev if prev_hash is None else prev_hash, r_seq if seq is None else seq,
                          ts, kind, operator, reason, job_id, details)
    except (TypeError, ValueError):  # a field rewritten to something JSON can't spell (bytes, NaN)
        return None


def _span(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first}-{last}"


class AuditTrail:
    """Append-only, hash-chained audit trail in the `audit` table of `conn`."""

    def __init__(self, conn: sqlite3.Connection, anchor_path: Path | str | None = None,
                 lock: threading.RLock | None = None) -> None:
        """`lock`: the lock that guards `conn` for its other users (the store's), so a reader on
        one thread never sees another thread's uncommitted entries."""
        self._conn = conn
        self._anchor_path = Path(anchor_path) if anchor_path is not None else None
        self._lock = lock if lock is not None else threading.RLock()
        was_in_tx = conn.in_transaction
        if was_in_tx:
            # executescript() would COMMIT the caller's transaction first; run statements one by one.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        else:
            conn.executescript(_SCHEMA)
            if conn.in_transaction:
                conn.commit()
        if self._anchor_path is not None:
            if not self._anchor_path.exists() and self._head()[0] == 0:
                # The file is born with the trail (a genesis anchor is true whatever the caller's
                # transaction does). A file that goes missing later is reported, never re-created.
                self._write_anchor_file(0, GENESIS_HASH)
            elif not was_in_tx:
                self._sync_anchor_file()  # catch up after appends made inside callers' transactions

    @property
    def anchor_path(self) -> Path | None:
        return self._anchor_path

    # ------------------------------------------------------------------ writing

    def append(
        self,
        kind: str,
        *,
        operator: str,
        reason: str,
        job_id: str | int | None = None,
        details: Mapping[str, Any] | None = None,
        ts: float | None = None,
    ) -> AuditEntry:
        """Record one entry and return it.

        Jumps ("jump", "emergency", "priority") need a non-empty operator and reason. Inside a
        caller's transaction the entry joins it (and is undone if the caller rolls back); otherwise
        it is committed here, and the anchor file, if any, is brought up to the new head.
        """
        kind = str(kind).strip().lower()
        if kind not in KINDS:
            raise ValueError(f"unknown audit kind {kind!r}: expected one of {', '.join(sorted(KINDS))}")
        operator = "" if operator is None else str(operator).strip()
        reason = "" if reason is None else str(reason).strip()
        if kind in JUMP_KINDS:
            if not operator:
                raise ValueError("a jump needs an operator")
            if not reason:
                raise ValueError("a jump needs a reason")
        job = None if job_id is None else str(job_id)
        details_dict = dict(details) if details is not None else {}
        details_text = canonical_json(details_dict)  # raises on NaN / unserializable values
        when = time.time() if ts is None else float(ts)
        if not math.isfinite(when):
            raise ValueError(f"audit timestamp must be finite, got {ts!r}")

        conn = self._conn
        with self._lock:
            own_tx = not conn.in_transaction
            if own_tx:
                conn.execute("BEGIN IMMEDIATE")  # take the write lock before reading the head
            else:
                conn.execute("SAVEPOINT audit_append")
            try:
                head_seq, head_hash = self._head()
                seq = head_seq + 1
                digest = entry_hash(head_hash, seq, when, kind, operator, reason, job, details_text)
                conn.execute(
                    f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, when, kind, operator, reason, job, details_text, head_hash, digest),
                )
                conn.execute(
                    "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    (seq, digest),
                )
            except BaseException:
                if own_tx:
                    conn.rollback()
                else:
                    conn.execute("ROLLBACK TO audit_append")
                    conn.execute("RELEASE audit_append")
                raise
            if own_tx:
                conn.commit()
            else:
                conn.execute("RELEASE audit_append")
            if own_tx and self._anchor_path is not None:
                # After the commit: a crash in between leaves the file one entry behind, which is
                # consistent (a prefix), never ahead of what was committed.
                self._sync_anchor_file()
        return AuditEntry(seq, when, kind, operator, reason, job, details_dict, head_hash, digest)

    def _head(self) -> tuple[int, str]:
        """The seq and hash to chain onto: the anchored head, unless rows exist beyond it."""
        anchor = self._conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
        last = self._conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if anchor is not None and (last is None or anchor[0] >= last[0]):
            return int(anchor[0]), str(anchor[1])
        if last is not None:
            return int(last[0]), str(last[1])
        return 0, GENESIS_HASH

    def flush_anchor(self, *, force: bool = False) -> bool:
        """Write the committed head to the anchor file; True if the file now holds it.

        Call after committing a transaction that appended entries (appends inside a caller's
        transaction can't write the file, since they may yet be rolled back). The file only moves
        forward along the chain: if it disagrees with the table (evidence of tampering) it is left
        alone unless `force` -- an administrator accepting the table as it is, after looking.
        """
        if self._anchor_path is None:
            return False
        if self._conn.in_transaction:
            raise RuntimeError("flush_anchor() must run after the transaction commits")
        with self._lock:
            return self._sync_anchor_file(force=force)

    def _sync_anchor_file(self, *, force: bool = False) -> bool:
        assert self._anchor_path is not None
        row = self._conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
        head = (int(row[0]), str(row[1])) if row is not None else (0, GENESIS_HASH)
        if not force:
            try:
                current = self._read_anchor_file()
            except (OSError, ValueError):
                return False  # missing or unreadable: evidence for verify(), not something to paper over
            if current == head:
                return True
            f_seq, f_hash = current
            if f_seq > head[0]:
                return False
            if f_seq == 0:
                if f_hash != GENESIS_HASH:
                    return False
            else:
                stored = self._conn.execute("SELECT hash FROM audit WHERE seq = ?", (f_seq,)).fetchone()
                if stored is None or stored[0] != f_hash:
                    return False
        self._write_anchor_file(*head)
        return True

    def _read_anchor_file(self) -> tuple[int, str]:
        assert self._anchor_path is not None
        text = self._anchor_path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
            seq, digest = int(data["seq"]), str(data["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"anchor file {self._anchor_path} is unreadable: {exc}") from None
        return seq, digest

    def _write_anchor_file(self, seq: int, digest: str) -> None:
        path = self._anchor_path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        body = canonical_json({"seq": seq, "hash": digest, "written": time.time()}) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    # ------------------------------------------------------------------ reading

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the anchored head; (0, GENESIS_HASH) for an empty trail."""
        with self._lock:
            return self._head()

    def entries(
        self,
        job_id: str | int | None = None,
        kind: str | Iterable[str] | None = None,
        since: float | _dt.datetime | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Entries in seq order, filtered. `since` is an epoch time (or aware datetime), inclusive;
        `limit` keeps the most recent N of the matches (still returned oldest first)."""
        where, args = [], []
        if job_id is not None:
            where.append("job_id = ?")
            args.append(str(job_id))
        if kind is not None:
            kinds = [kind] if isinstance(kind, str) else list(kind)
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        if since is not None:
            where.append("ts >= ?")
            args.append(since.timestamp() if isinstance(since, _dt.datetime) else float(since))
        sql = f"SELECT {_COLUMNS} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:
            if limit < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
            args.append(int(limit))
        else:
            sql += " ORDER BY seq"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [self._entry(row) for row in rows]

    @staticmethod
    def _entry(row: tuple) -> AuditEntry:
        seq, ts, kind, operator, reason, job_id, details, prev_hash, digest = row
        try:
            parsed = json.loads(details) if details else {}
        except (TypeError, ValueError):
            parsed = {"_unparseable": str(details)}
        if not isinstance(parsed, dict):
            parsed = {"_value": parsed}
        return AuditEntry(seq, ts, kind, operator, reason, job_id, parsed, prev_hash, digest)

    def to_csv(self, path_or_file: str | os.PathLike[str] | IO[str], *, excel_safe: bool = True) -> int:
        """Export every entry (with its hashes) as CSV; returns the number of entries written.

        With `excel_safe`, text cells starting with = + - @ get a leading apostrophe so a spreadsheet
        never evaluates an operator-typed reason as a formula (re-verify from the database, not the CSV).
        """
        rows = self.entries()

        def cell(value: Any) -> Any:
            if excel_safe and isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
                return "'" + value
            return value

        def write(fh: IO[str]) -> None:
            writer = csv.writer(fh)
            writer.writerow(_CSV_FIELDS)
            for e in rows:
                writer.writerow([
                    e.seq, e.time_utc.isoformat(timespec="milliseconds"), repr(e.ts), cell(e.kind),
                    cell(e.operator), cell(e.reason), cell(e.job_id or ""), cell(canonical_json(e.details)),
                    e.prev_hash, e.hash,
                ])

        if hasattr(path_or_file, "write"):
            write(path_or_file)  # type: ignore[arg-type]
        else:
            with open(path_or_file, "w", encoding="utf-8", newline="") as fh:  # type: ignore[arg-type]
                write(fh)
        return len(rows)

    # ------------------------------------------------------------------ checking

    def verify(self) -> AuditVerification:
        """Walk the chain and compare its head with the anchors. Reads only; changes nothing."""
        with self._lock:
            return self._verify()

    def _verify(self) -> AuditVerification:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY seq").fetchall()
        problems: list[str] = []

        bad = {row[0]: row for row in rows if _row_hash(row) != row[8]}
        prev_seq, prev_hash, prev_ok = 0, GENESIS_HASH, True
        for row in rows:
            seq, stored_prev, stored_hash = row[0], row[7], row[8]
            content_ok = seq not in bad
            if not content_ok:
                moved = self._moved_from(row, bad)
                if moved is not None:
                    problems.append(f"entry {seq}: holds the contents written as entry {moved} (rows swapped or reordered)")
                else:
                    problems.append(f"entry {seq}: contents changed after it was written")
            if seq > prev_seq + 1:
                problems.append(_span(prev_seq + 1, seq - 1) + " missing")
            elif content_ok and prev_ok and stored_prev != prev_hash:
                what = "the start of the trail" if prev_seq == 0 else f"entry {prev_seq}"
                problems.append(f"entry {seq}: does not follow {what} (chain link broken)")
            prev_seq, prev_hash, prev_ok = seq, stored_hash, content_ok

        last_seq = rows[-1][0] if rows else 0
        by_seq = {row[0]: row for row in rows}
        ends = f"table ends at {last_seq}" if rows else "table is empty"

        anchor = self._conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
        a_seq = None
        if anchor is None:
            if rows:
                problems.append(f"anchor missing: the table holds {len(rows)} entries but no anchored head")
        else:
            a_seq, a_hash = int(anchor[0]), str(anchor[1])
            problems += self._compare_head("anchor", a_seq, a_hash, last_seq, ends, by_seq)

        if self._anchor_path is not None:
            try:
                f_seq, f_hash = self._read_anchor_file()
            except FileNotFoundError:
                if rows or (a_seq or 0) > 0:
                    problems.append(f"anchor file missing: {self._anchor_path}")
            except (OSError, ValueError) as exc:
                problems.append(f"anchor file unreadable: {exc}")
            else:
                if f_seq > last_seq:
                    if anchor is not None and (f_seq, f_hash) == (a_seq, str(anchor[1])):
                        pass  # the same truncation, already reported from the in-database anchor
                    elif a_seq is not None and a_seq <= last_seq:
                        problems.append(f"anchor file says seq {f_seq} but the {ends}: "
                                        f"{_deleted(f_seq - last_seq)} and the in-database anchor rewritten")
                    else:
                        problems.append(f"{_deleted(f_seq - last_seq)} (anchor file says seq {f_seq}, {ends})")
                elif f_seq > 0 and f_seq in by_seq and by_seq[f_seq][8] != f_hash:
                    problems.append(f"anchor file disagrees with the table at entry {f_seq} "
                                    "(entries rewritten since it was anchored)")
                elif f_seq == 0 and f_hash != GENESIS_HASH:
                    problems.append("anchor file holds an unknown hash for the start of the trail")
                # f_seq below the head with a matching hash: the file lags (an append inside a
                # caller's transaction, or a crash just after a commit) -- consistent, not damage.

        return AuditVerification(ok=not problems, checked=len(rows), problems=problems)

    @staticmethod
    def _moved_from(row: tuple, bad: dict[int, tuple]) -> int | None:
        """If a damaged row's contents hash correctly at another seq, return that seq."""
        seq, stored_hash = row[0], row[8]
        candidates = sorted((set(bad) | {seq - 1, seq + 1}) - {seq})
        for other in candidates:
            if other < 1:
                continue
            if _row_hash(row, seq=other) == stored_hash:  # the whole row was moved here
                return other
            twin = bad.get(other)
            if twin is not None and _row_hash(row, seq=other, prev_hash=twin[7]) == twin[8]:
                return other  # only the contents were moved; the hashes stayed behind
        return None

    @staticmethod
    def _compare_head(label: str, a_seq: int, a_hash: str, last_seq: int, ends: str,
                      by_seq: dict[int, tuple]) -> list[str]:
        if a_seq > last_seq:
            return [f"{_deleted(a_seq - last_seq)} ({label} says seq {a_seq}, {ends})"]
        if a_seq == 0:
            if by_seq:
                return [f"{_span(min(by_seq), last_seq)} added outside the audit trail ({label} says the trail is empty)"]
            return []
        problems = []
        row = by_seq.get(a_seq)
        if row is not None and row[8] != a_hash:
            problems.append(f"entry {a_seq}: differs from the anchored head (rewritten after it was written)")
        if last_seq > a_seq:
            problems.append(f"{_span(a_seq + 1, last_seq)} added outside the audit trail ({label} says seq {a_seq})")
        return problems


def _deleted(n: int) -> str:
    return "last entry deleted" if n == 1 else f"last {n} entries deleted"
