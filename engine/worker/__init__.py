"""The training worker: one process per job, the only code that imports torch and Ultralytics.

Run as `python -m engine.worker SPEC_JSON`. The contract (signals, exit statuses, files) is in
engine/protocol.py; the exact-resume trainer in trainer.py.
"""
