"""The worker's control channel: JSON lines from the engine on stdin, used only by gated and
standby workers (a plain worker needs none).

    {"spec": "/path/spec.json", "env": {...}}   standby: the job to run and its device environment
    {"go": true}                                 gated: the device is free, start the first batch

End of input means the engine went away: the worker stops before training rather than train
unsupervised. Reads poll with a short timeout so a SIGTERM (which only sets a flag) is seen.
"""
from __future__ import annotations

import json
import os
import select
import sys

from .signals import StopSignals

POLL_SECONDS = 0.05


class ControlChannel:
    def __init__(self, signals: StopSignals, fd: int | None = None) -> None:
        self.signals = signals
        self.fd = sys.stdin.fileno() if fd is None else fd
        self._buffer = b""
        self.closed = False

    def receive(self) -> dict | None:
        """The next message, or None once stopped by a signal or the channel closed."""
        while True:
            if b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.strip():
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        raise ValueError(f"control message must be a JSON object, got {line[:80]!r}")
                    return message
                continue
            if self.signals.preempt or self.closed:
                return None
            ready, _, _ = select.select([self.fd], [], [], POLL_SECONDS)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.closed = True
                    return None
                self._buffer += chunk

    def wait_for_go(self) -> bool:
        while True:
            message = self.receive()
            if message is None:
                return False
            if message.get("go"):
                return True
