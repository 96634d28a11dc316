"""Engine -> GUI: the engine calls its listeners on its own thread; this turns each call into a Qt
signal, which Qt delivers on the GUI thread (queued across threads). The console never touches
engine state from a listener, and never blocks the GUI thread waiting for the engine."""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal


class EngineBridge(QObject):
    job_changed = Signal(int)          # job id (progress, state, anything in its row)
    event = Signal(dict)               # one worker event, with "job_id"
    notification = Signal(object)      # engine.store.Notification
    engine_state = Signal(str)         # running / stopping / stopped

    def __init__(self, engine, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        engine.subscribe(self._on_engine)

    def _on_engine(self, kind: str, payload: Any) -> None:  # engine thread
        if kind == "job":
            self.job_changed.emit(int(payload.id))
        elif kind == "event":
            self.event.emit(payload)
        elif kind == "notification":
            self.notification.emit(payload)
        elif kind == "engine":
            self.engine_state.emit(str(payload.get("state")))
