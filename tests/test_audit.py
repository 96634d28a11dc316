"""The audit trail on a real SQLite file: chains, verifies, and notices every kind of tampering."""
from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest

from engine.audit import GENESIS_HASH, AuditEntry, AuditTrail, entry_hash


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "cutline.sqlite3"


@pytest.fixture
def conn(db_path):
    c = sqlite3.connect(db_path)
    yield c
    c.close()


@pytest.fixture
def anchor(tmp_path):
    return tmp_path / "audit.anchor"


def fill(trail: AuditTrail, n: int = 5) -> list[AuditEntry]:
    out = []
    for i in range(n):
        out.append(trail.append(
            "jump" if i % 2 == 0 else "yield",
            operator=f"op{i}", reason=f"reason {i}" if i % 2 == 0 else "",
            job_id=f"job-{i % 3}", details={"from": i + 3, "to": 1, "note": "ünïcode"}, ts=1_700_000_000.0 + i,
        ))
    return out


def test_chain_of_appends_verifies(conn, anchor):
    trail = AuditTrail(conn, anchor)
    entries = fill(trail, 6)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in zip(entries, entries[1:]):
        assert after.prev_hash == before.hash
    result = trail.verify()
    assert result.ok, result.problems
    assert result.checked == 6
    assert result.problems == []
    assert trail.entries() == entries
    assert trail.head() == (6, entries[-1].hash)
    assert json.loads(anchor.read_text())["seq"] == 6


def test_stored_row_matches_returned_entry_and_hash_recomputes(conn):
    trail = AuditTrail(conn)
    e = trail.append("emergency", operator=" ana ", reason="  line 3 mould crack escapes, ticket 4411 ",
                     job_id=42, details={"b": 1, "a": [1, 2]}, ts=1234.5)
    row = conn.execute("SELECT seq, ts, kind, operator, reason, job_id, details, prev_hash, hash FROM audit").fetchone()
    assert row == (1, 1234.5, "emergency", "ana", "line 3 mould crack escapes, ticket 4411", "42",
                   '{"a":[1,2],"b":1}', GENESIS_HASH, e.hash)
    assert e.hash == entry_hash(GENESIS_HASH, 1, 1234.5, "emergency", "ana",
                                "line 3 mould crack escapes, ticket 4411", "42", '{"a":[1,2],"b":1}')
    assert e.details == {"a": [1, 2], "b": 1}
    assert e.job_id == "42" and e.is_jump


def test_empty_trail_verifies(conn, anchor):
    result = AuditTrail(conn, anchor).verify()
    assert result.ok and result.checked == 0


@pytest.mark.parametrize(
    "column, value",
    [
        ("reason", "nothing to see here"),
        ("operator", "somebody else"),
        ("details", '{"from":99,"note":"ünïcode","to":1}'),
        ("kind", "yield"),
        ("ts", 1.0),
        ("job_id", "job-9"),
        ("prev_hash", "f" * 64),
        ("hash", "0" * 64),
    ],
)
def test_editing_a_field_is_detected_and_named(conn, column, value):
    trail = AuditTrail(conn)
    fill(trail, 5)
    conn.execute(f"UPDATE audit SET {column} = ? WHERE seq = 3", (value,))
    conn.commit()
    result = trail.verify()
    assert not result.ok
    assert "entry 3: contents changed after it was written" in result.problems
    assert not any(p.startswith(("entry 1", "entry 2")) for p in result.problems)


def test_edit_that_keeps_json_meaning_is_still_detected(conn):
    trail = AuditTrail(conn)
    fill(trail, 3)
    conn.execute("""UPDATE audit SET details = '{"to": 1, "from": 4, "note": "ünïcode"}' WHERE seq = 2""")
    conn.commit()
    assert trail.verify().problems == ["entry 2: contents changed after it was written"]


def test_rewriting_a_row_and_its_hash_breaks_the_next_link(conn):
    trail = AuditTrail(conn)
    fill(trail, 5)
    seq, ts, kind, op, _reason, job, details, prev = conn.execute(
        "SELECT seq, ts, kind, operator, reason, job_id, details, prev_hash FROM audit WHERE seq = 2").fetchone()
    forged = entry_hash(prev, seq, ts, kind, op, "forged", job, details)
    conn.execute("UPDATE audit SET reason = 'forged', hash = ? WHERE seq = 2", (forged,))
    conn.commit()
    result = trail.verify()
    assert result.problems == ["entry 3: does not follow entry 2 (chain link broken)"]


def test_deleting_a_middle_row_is_detected(conn):
    trail = AuditTrail(conn)
    fill(trail, 8)
    conn.execute("DELETE FROM audit WHERE seq = 5")
    conn.commit()
    result = trail.verify()
    assert result.problems == ["entry 5 missing"]
    assert result.checked == 7


def test_deleting_several_rows_and_the_first_row(conn):
    trail = AuditTrail(conn)
    fill(trail, 9)
    conn.execute("DELETE FROM audit WHERE seq IN (1, 4, 5, 6)")
    conn.commit()
    assert trail.verify().problems == ["entry 1 missing", "entries 4-6 missing"]


def test_deleting_the_last_rows_is_detected_through_the_anchor(conn):
    trail = AuditTrail(conn)
    fill(trail, 9)
    conn.execute("DELETE FROM audit WHERE seq >= 8")
    conn.commit()
    result = trail.verify()
    assert result.problems == ["last 2 entries deleted (anchor says seq 9, table ends at 7)"]

    conn.execute("DELETE FROM audit")
    conn.commit()
    assert trail.verify().problems == ["last 9 entries deleted (anchor says seq 9, table is empty)"]


def test_deleting_the_last_row_is_detected(conn, anchor):
    trail = AuditTrail(conn, anchor)
    fill(trail, 4)
    conn.execute("DELETE FROM audit WHERE seq = 4")
    conn.commit()
    # Both anchors say seq 4; the damage is reported once.
    assert trail.verify().problems == ["last entry deleted (anchor says seq 4, table ends at 3)"]


def test_deleting_the_anchor_row_is_detected(conn):
    trail = AuditTrail(conn)
    fill(trail, 3)
    conn.execute("DELETE FROM audit_anchor")
    conn.commit()
    assert trail.verify().problems == ["anchor missing: the table holds 3 entries but no anchored head"]


def test_rows_inserted_behind_the_trails_back_are_detected(conn):
    trail = AuditTrail(conn)
    (e,) = fill(trail, 1)
    forged = entry_hash(e.hash, 2, 5.0, "cancel", "x", "", None, "{}")
    conn.execute("INSERT INTO audit VALUES (2, 5.0, 'cancel', 'x', '', NULL, '{}', ?, ?)", (e.hash, forged))
    conn.commit()
    assert trail.verify().problems == ["entry 2 added outside the audit trail (anchor says seq 1)"]


def test_appends_after_a_truncation_keep_the_gap_visible(conn):
    trail = AuditTrail(conn)
    fill(trail, 5)
    conn.execute("DELETE FROM audit WHERE seq >= 4")
    conn.commit()
    new = trail.append("cancel", operator="ana", reason="")
    assert new.seq == 6  # chains onto the anchored head, not onto the surviving last row
    assert trail.verify().problems == ["entries 4-5 missing"]


def test_truncation_with_rewritten_db_anchor_is_caught_by_the_anchor_file(conn, anchor):
    trail = AuditTrail(conn, anchor)
    entries = fill(trail, 6)
    conn.execute("DELETE FROM audit WHERE seq >= 5")
    conn.execute("UPDATE audit_anchor SET seq = 4, hash = ?", (entries[3].hash,))
    conn.commit()
    result = trail.verify()
    assert result.problems == [
        "anchor file says seq 6 but the table ends at 4: last 2 entries deleted and the in-database anchor rewritten"
    ]
    # The file is evidence: later appends must not move it past the damage.
    trail.append("cancel", operator="ana", reason="")
    assert json.loads(anchor.read_text())["seq"] == 6
    assert not trail.verify().ok


def test_anchor_file_that_disagrees_with_the_table(conn, anchor):
    trail = AuditTrail(conn, anchor)
    fill(trail, 4)
    anchor.write_text(json.dumps({"seq": 4, "hash": "ab" * 32}))
    assert trail.verify().problems == [
        "anchor file disagrees with the table at entry 4 (entries rewritten since it was anchored)"
    ]
    anchor.write_text(json.dumps({"seq": 7, "hash": "ab" * 32}))
    assert trail.verify().problems == [
        "anchor file says seq 7 but the table ends at 4: last 3 entries deleted and the in-database anchor rewritten"
    ]
    anchor.write_text("not json")
    (problem,) = trail.verify().problems
    assert problem.startswith("anchor file unreadable")
    anchor.unlink()
    assert trail.verify().problems == [f"anchor file missing: {anchor}"]
    # A lost file is never silently re-created; an administrator accepts the table explicitly.
    trail.append("cancel", operator="ana", reason="")
    assert not anchor.exists()
    assert trail.flush_anchor(force=True)
    assert trail.verify().ok


def test_swapping_two_rows_contents_is_detected(conn):
    trail = AuditTrail(conn)
    fill(trail, 6)
    cols = "ts, kind, operator, reason, job_id, details"
    r3 = conn.execute(f"SELECT {cols} FROM audit WHERE seq = 3").fetchone()
    r4 = conn.execute(f"SELECT {cols} FROM audit WHERE seq = 4").fetchone()
    sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
    conn.execute(f"UPDATE audit SET {sets} WHERE seq = 3", r4)
    conn.execute(f"UPDATE audit SET {sets} WHERE seq = 4", r3)
    conn.commit()
    assert trail.verify().problems == [
        "entry 3: holds the contents written as entry 4 (rows swapped or reordered)",
        "entry 4: holds the contents written as entry 3 (rows swapped or reordered)",
    ]


def test_swapping_whole_rows_including_hashes_is_detected(conn):
    trail = AuditTrail(conn)
    fill(trail, 6)
    conn.execute("UPDATE audit SET seq = -3 WHERE seq = 3")
    conn.execute("UPDATE audit SET seq = 3 WHERE seq = 4")
    conn.execute("UPDATE audit SET seq = 4 WHERE seq = -3")
    conn.commit()
    assert trail.verify().problems == [
        "entry 3: holds the contents written as entry 4 (rows swapped or reordered)",
        "entry 4: holds the contents written as entry 3 (rows swapped or reordered)",
    ]


@pytest.mark.parametrize("kind", ["jump", "emergency", "priority"])
def test_jumps_need_an_operator_and_a_reason(conn, kind):
    trail = AuditTrail(conn)
    with pytest.raises(ValueError, match="^a jump needs a reason$"):
        trail.append(kind, operator="ana", reason="   ")
    with pytest.raises(ValueError, match="^a jump needs an operator$"):
        trail.append(kind, operator=" \t", reason="line 3 escapes")
    assert trail.entries() == []
    assert trail.append(kind, operator="ana", reason="line 3 escapes").seq == 1


def test_yields_and_engine_actions_need_no_reason(conn):
    trail = AuditTrail(conn)
    trail.append("yield", operator="ana", reason="")
    trail.append("preempt", operator="engine", reason="", job_id="nightly", details={"by": "retrain"})
    assert [e.kind for e in trail.entries()] == ["yield", "preempt"]


def test_unknown_kinds_and_bad_details_are_refused(conn):
    trail = AuditTrail(conn)
    with pytest.raises(ValueError, match="unknown audit kind 'emergancy'"):
        trail.append("emergancy", operator="ana", reason="")  # a typo must not dodge the reason check
    with pytest.raises(ValueError):
        trail.append("cancel", operator="ana", reason="", details={"x": float("nan")})
    with pytest.raises(TypeError):
        trail.append("cancel", operator="ana", reason="", details={"x": object()})
    assert trail.entries() == [] and trail.verify().ok


def test_works_in_wal_mode_across_connections(db_path, anchor):
    a = sqlite3.connect(db_path)
    assert a.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    b = sqlite3.connect(db_path, timeout=5)
    try:
        ta, tb = AuditTrail(a, anchor), AuditTrail(b, anchor)
        ta.append("jump", operator="ana", reason="r1")
        tb.append("jump", operator="bo", reason="r2")  # sees a's head through the shared anchor row
        ta.append("yield", operator="ana", reason="")
        assert [e.operator for e in tb.entries()] == ["ana", "bo", "ana"]
        assert ta.verify().ok and tb.verify().ok
        assert json.loads(anchor.read_text())["seq"] == 3
    finally:
        a.close()
        b.close()


def test_append_joins_the_callers_transaction(conn, anchor):
    conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, position INTEGER)")
    conn.commit()
    trail = AuditTrail(conn, anchor)
    trail.append("submit", operator="ana", reason="")

    conn.execute("INSERT INTO jobs VALUES ('retrain', 0)")  # opens an implicit transaction
    assert conn.in_transaction
    trail.append("emergency", operator="ana", reason="line 3", job_id="retrain")
    assert conn.in_transaction, "append must not commit the caller's transaction"
    conn.rollback()
    assert [e.kind for e in trail.entries()] == ["submit"]
    assert trail.verify().ok

    conn.execute("INSERT INTO jobs VALUES ('retrain', 0)")
    e = trail.append("emergency", operator="ana", reason="line 3", job_id="retrain")
    assert e.seq == 2
    conn.commit()
    assert [x.seq for x in trail.entries(job_id="retrain")] == [2]
    # The file can't move inside the caller's transaction; it lags (consistently) until flushed.
    assert json.loads(anchor.read_text())["seq"] == 1
    assert trail.verify().ok
    assert trail.flush_anchor()
    assert json.loads(anchor.read_text())["seq"] == 2


def test_a_failed_append_in_a_callers_transaction_leaves_it_intact(conn):
    trail = AuditTrail(conn)
    conn.execute("CREATE TABLE jobs (id TEXT)")
    conn.execute("INSERT INTO jobs VALUES ('a')")
    conn.execute("INSERT INTO jobs VALUES ('b')")
    conn.execute("CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'nope'); END")
    with pytest.raises(sqlite3.IntegrityError):
        trail.append("cancel", operator="ana", reason="")
    assert conn.in_transaction
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM audit_anchor").fetchone()[0] == 0


def test_reopen_from_disk_and_continue_the_chain(db_path, anchor):
    c1 = sqlite3.connect(db_path)
    first = fill(AuditTrail(c1, anchor), 3)
    c1.close()

    c2 = sqlite3.connect(db_path)
    try:
        trail = AuditTrail(c2, anchor)
        assert trail.entries() == first
        nxt = trail.append("priority", operator="bo", reason="customer audit friday", job_id="job-1")
        assert nxt.seq == 4 and nxt.prev_hash == first[-1].hash
        result = trail.verify()
        assert result.ok and result.checked == 4
    finally:
        c2.close()


def test_entries_filters(conn):
    trail = AuditTrail(conn)
    fill(trail, 6)  # kinds alternate jump/yield; job ids cycle job-0, job-1, job-2; ts = base + i
    assert [e.seq for e in trail.entries(job_id="job-0")] == [1, 4]
    assert [e.seq for e in trail.entries(kind="yield")] == [2, 4, 6]
    assert [e.seq for e in trail.entries(kind=["jump", "yield"], limit=2)] == [5, 6]
    assert [e.seq for e in trail.entries(since=1_700_000_003.0)] == [4, 5, 6]
    assert [e.seq for e in trail.entries(job_id="job-1", kind="yield")] == [2]
    assert trail.entries(limit=0) == []


def test_csv_export_contains_the_rows(conn, tmp_path):
    trail = AuditTrail(conn)
    trail.append("emergency", operator="ana", reason="line 3 mould crack, ticket 4411", job_id="retrain",
                 details={"victim": "nightly"}, ts=1_700_000_000.25)
    trail.append("yield", operator="bo", reason="=HYPERLINK(\"x\")", job_id="nightly")
    path = tmp_path / "audit.csv"
    assert trail.to_csv(path) == 2
    rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
    assert [r["seq"] for r in rows] == ["1", "2"]
    assert rows[0]["kind"] == "emergency" and rows[0]["operator"] == "ana"
    assert rows[0]["reason"] == "line 3 mould crack, ticket 4411"
    assert rows[0]["job_id"] == "retrain"
    assert json.loads(rows[0]["details"]) == {"victim": "nightly"}
    assert rows[0]["time_utc"] == "2023-11-14T22:13:20.250+00:00"
    assert rows[1]["reason"] == "'=HYPERLINK(\"x\")"  # a spreadsheet must not run it
    assert rows[1]["prev_hash"] == rows[0]["hash"]

    buf = io.StringIO()
    trail.to_csv(buf, excel_safe=False)
    assert '=HYPERLINK(""x"")' in buf.getvalue()
