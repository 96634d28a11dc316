"""Signal flags of the worker. Installed first thing, before any slow import, so a preemption that
arrives while torch is still loading is not lost. Handlers only set flags; the loop acts on them."""
from __future__ import annotations

import os
import signal

from engine import protocol

# Drills and tests: a worker that ignores stop requests, as a hung one would (the engine's grace
# deadline must end it with SIGKILL). Safety checkpoints (SIGUSR1) still work.
FAULT_IGNORE_STOP_ENV = "CUTLINE_FAULT_IGNORE_STOP"


class StopSignals:
    def __init__(self) -> None:
        self.preempt = False
        self.checkpoint = False


def install() -> StopSignals:
    signals = StopSignals()

    def preempt(signum, frame):
        signals.preempt = True
        for s in protocol.PREEMPT_SIGNALS:  # a second signal kills at once; the last checkpoint stays valid
            signal.signal(s, signal.SIG_DFL)

    def checkpoint(signum, frame):
        signals.checkpoint = True

    ignore = bool(os.environ.get(FAULT_IGNORE_STOP_ENV))
    for s in protocol.PREEMPT_SIGNALS:
        signal.signal(s, signal.SIG_IGN if ignore else preempt)
    signal.signal(protocol.CHECKPOINT_SIGNAL, checkpoint)
    return signals
