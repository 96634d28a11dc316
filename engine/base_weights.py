"""Frozen copies of the weights an emergency retrain starts from.

A retrain "from job 12" must start from the weights the operator chose when confirming, not from
whatever job 12 writes later: job 12 may still be training (it is often the very job the retrain
preempts) and rewrites best.pt at each better epoch; Ultralytics' final step rewrites it in place.
So the engine reads the file once it is whole (a PyTorch checkpoint is a zip archive: its
directory and every member's CRC prove it complete), and keeps that copy under its sha256 in
`<home>/base-weights/`. The audit trail records the source and the digest.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

FOLDER = "base-weights"
ATTEMPTS = 20             # a writer mid-file gets this many chances, READ_PAUSE_S apart, to finish
READ_PAUSE_S = 0.25


class WeightsUnreadable(Exception):
    """The source file never read back as a whole checkpoint."""


@dataclass(frozen=True)
class FrozenWeights:
    path: Path       # the copy the retrain trains from
    source: Path     # the file it was read from
    sha256: str


def is_whole_checkpoint(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def freeze(source: Path, home: Path, *, attempts: int = ATTEMPTS, pause_s: float = READ_PAUSE_S) -> FrozenWeights:
    """Copy `source` into the home's base-weights folder once it reads back whole; the copy's name is
    its digest, so freezing the same weights twice stores them once."""
    source = Path(source)
    for attempt in range(attempts):
        data = source.read_bytes()
        if is_whole_checkpoint(data):
            break
        if attempt + 1 < attempts:
            time.sleep(pause_s)
    else:
        raise WeightsUnreadable(f"{source} is not a complete PyTorch checkpoint (read {attempts} times "
                                f"over {attempts * pause_s:.0f} s: truncated, corrupted or never finished writing)")
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(home) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{digest[:16]}-{source.stem}.pt"
    if not target.is_file() or target.stat().st_size != len(data):
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    return FrozenWeights(path=target, source=source, sha256=digest)
