"""The job event stream: append-only JSON lines in the run folder.

The worker writes it; the engine and console read it (live plots, history after a restart).
Each line is one JSON object with at least `ts` (wall clock, seconds) and `event`.
A line cut short by a crash is skipped by the reader, never fatal.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

EVENTS_FILE = "events.jsonl"

# Events after which the reader must be able to rely on the line being on disk.
DURABLE_EVENTS = frozenset({"started", "checkpoint", "preempted", "finished", "failed"})

# Added by EventTail, not written by the worker: where the record's line ends in the file. A reader
# that loaded a stream's history up to some position uses it to drop live copies of lines it has.
STREAM_END = "stream_end"


class EventWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def emit(self, event: str, **fields: Any) -> dict:
        record = {"ts": time.time(), "event": event, **fields}
        self._file.write(json.dumps(record, default=_jsonable, allow_nan=False) + "\n")
        self._file.flush()
        if event in DURABLE_EVENTS:
            os.fsync(self._file.fileno())
        return record

    def close(self) -> None:
        self._file.close()


def _jsonable(value: Any) -> Any:
    # numpy scalars, tensors' .item() results and Paths reach us from the trainer
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def read_events(path: str | Path) -> list[dict]:
    return list(iter_events(path))


def iter_events(path: str | Path) -> Iterator[dict]:
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = _parse(line)
            if record is not None:
                yield record


def _parse(line: str) -> dict | None:
    line = line.strip()
    if not line:
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None  # a line torn by a crash mid-write
    return record if isinstance(record, dict) and "event" in record else None


@dataclass
class EventTail:
    """Incrementally reads new complete lines of a growing event file (for the engine's watcher).

    `offset` is a byte position: a job's run appends to the stream its earlier runs wrote, and
    the engine starts each run's tail where that run began."""

    path: Path
    offset: int = 0
    _pending: bytes = field(default=b"", repr=False)

    def read_new(self) -> list[dict]:
        """New complete records, each with `STREAM_END`: the byte position just after its line."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except OSError:
            return []
        position = self.offset - len(chunk) - len(self._pending)
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()  # incomplete last line waits for the rest
        records = []
        for line in lines:
            position += len(line) + 1
            record = _parse(line.decode("utf-8", "replace"))
            if record is not None:
                record[STREAM_END] = position
                records.append(record)
        return records

    @property
    def complete_offset(self) -> int:
        """The end of the last complete line read so far."""
        return self.offset - len(self._pending)


def stream_size(path: str | Path) -> int:
    """Where the next run's events will start."""
    try:
        return Path(path).stat().st_size
    except OSError:  # missing, or its folder is not one: the launch will say what is wrong
        return 0
