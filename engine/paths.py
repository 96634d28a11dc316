"""Where Cutline keeps its data: `--home`, else $CUTLINE_HOME, else the platform's user data dir."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV = "CUTLINE_HOME"


def cutline_home(explicit: str | os.PathLike | None = None) -> Path:
    chosen = explicit or os.environ.get(HOME_ENV) or platformdirs.user_data_dir("cutline", appauthor=False)
    home = Path(chosen).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def runs_dir(home: Path) -> Path:
    return home / "runs"


def ultralytics_config_dir(home: Path) -> Path:
    return home / "ultralytics"


def demo_dataset_dir(home: Path) -> Path:
    return home / "demo" / "surface-defects"
