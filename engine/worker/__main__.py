import os
import sys

from .signals import install

_signals = install()  # before the heavy imports below

from .main import main  # noqa: E402

_code = main(signals=_signals)
# Everything that matters (events, checkpoint) is fsynced already. Skip the interpreter's slow
# teardown of torch and Ultralytics (measured ~2 s): a preempted job frees its device sooner.
sys.stdout.flush()
sys.stderr.flush()
os._exit(_code)
