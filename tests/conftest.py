import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from engine.demo_dataset import generate_dataset  # noqa: E402

from worker_runs import make_spec, run_worker  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """32 train + 8 val generated images at 64 px: 8 batches of 4 per epoch."""
    return generate_dataset(tmp_path_factory.mktemp("data") / "surface", train=32, val=8, imgsz=64, seed=0)


@pytest.fixture(scope="session")
def baseline_run(tmp_path_factory, tiny_dataset) -> Path:
    """One uninterrupted run of the tiny job: the reference every preempted run must reproduce."""
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    rc = run_worker(make_spec(run_dir, tiny_dataset))
    assert rc == 0, (run_dir / "worker.log").read_text()[-3000:]
    return run_dir
