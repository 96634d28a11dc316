"""Crash-safe checkpoint files: a reader sees the old file or the new one, never half of either."""
from __future__ import annotations

import os
import time
from pathlib import Path

# Fault injection for tests and drills: pause this many seconds halfway through writing a
# checkpoint, so a kill -9 can be aimed at the moment the file is being written.
SLOW_WRITE_ENV = "CUTLINE_FAULT_SLOW_CHECKPOINT_WRITE_S"


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over the old file, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pause = float(os.environ.get(SLOW_WRITE_ENV, "0") or 0)
    with open(tmp, "wb") as f:
        if pause > 0:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            time.sleep(pause)
            f.write(data[half:])
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
