from .signals import install

_signals = install()  # before the heavy imports below

from .main import main  # noqa: E402

raise SystemExit(main(signals=_signals))
