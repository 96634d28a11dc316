"""Process locks enforced by the kernel (`flock`), and their first use, one worker per run folder: the worker holds an exclusive `flock` on
`<run>/worker.lock` for its whole life, and the kernel drops it when the process dies, however it
dies. So "is a worker alive for this job?" has an answer that survives an engine crash (the engine
adopts the live worker instead of starting a second one), and a second worker for the same run
refuses to start at all.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

LOCK_FILE = "worker.lock"


class RunBusy(RuntimeError):
    pass


class Busy(RuntimeError):
    def __init__(self, holder: dict) -> None:
        super().__init__(f"held by pid {holder.get('pid', '?')}")
        self.holder = holder


def take(path: str | os.PathLike) -> int:
    """Take an exclusive lock on the file at `path` for this process, recording our pid in it;
    returns the fd to keep open (the kernel drops the lock when the process ends). Raises Busy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise Busy(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.time()}).encode(), 0)
    return fd


def held_by(path: str | os.PathLike) -> dict | None:
    """{'pid': ..., 'since': ...} of the live process holding the lock file, or None if none does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def acquire(run_dir: str | os.PathLike) -> int:
    """Take the run's lock for this process; returns the fd to keep open. Raises RunBusy."""
    try:
        return take(Path(run_dir) / LOCK_FILE)
    except Busy as e:
        raise RunBusy(f"another worker (pid {e.holder.get('pid', '?')}) already runs {run_dir}") from None


def holder(run_dir: str | os.PathLike) -> dict | None:
    """{'pid': ..., 'since': ...} of the live worker holding the run, or None if none does."""
    return held_by(Path(run_dir) / LOCK_FILE)


def _read(fd: int) -> dict:
    try:
        value = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {"pid": value}
