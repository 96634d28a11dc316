"""The contract between the engine and a training worker process.

The worker speaks to the engine only through files in its run folder, its exit status and signals:

    SIGTERM / SIGINT  finish the current batch, write a resumable checkpoint, exit PREEMPTED.
                      Validation in progress is abandoned. A second signal kills at once.
    SIGUSR1           write a safety checkpoint at the next batch boundary and keep training.

Nothing here imports torch, so the engine and console can use it freely.
"""
from __future__ import annotations

import os
import signal

# Exit statuses. 75 is EX_TEMPFAIL from sysexits.h: "try again later", which is exactly
# what a preempted worker means; Slurm's RequeueExit can list it too.
EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75
EXIT_RUN_BUSY = 73  # EX_CANTCREAT: another live worker already holds this run folder

SPEC_FILE = "spec.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "worker.log"
RESUME_CHECKPOINT = "weights/resume.pt"
FINAL_STATE = "weights/final_state.pt"

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHECKPOINT_SIGNAL = signal.SIGUSR1


def describe_exit(returncode: int) -> str:
    """Plain words for a worker's exit status (negative = killed by that signal, as subprocess reports)."""
    if returncode == EXIT_FINISHED:
        return "finished"
    if returncode == EXIT_PREEMPTED:
        return "preempted (checkpoint saved, resumable)"
    if returncode == EXIT_RUN_BUSY:
        return "refused to start: another worker already runs this job"
    if returncode == EXIT_BAD_INPUT:
        return "rejected its input (see the error in the event stream)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"failed with exit status {returncode}"


def worker_environment(base: dict[str, str] | None, config_dir: str) -> dict[str, str]:
    """Environment for a worker: offline, quiet, Ultralytics settings kept inside Cutline's data dir."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "YOLO_OFFLINE": "1",
            "YOLO_AUTOINSTALL": "0",
            "YOLO_CONFIG_DIR": config_dir,
            "YOLO_VERBOSE": env.get("YOLO_VERBOSE", "True"),
            "PYTHONUNBUFFERED": "1",
            # Ultralytics and matplotlib must never reach for the network or a display.
            "MPLBACKEND": "Agg",
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env
