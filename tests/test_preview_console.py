"""The first console window, with real widgets (offscreen) over real worker runs."""
import shutil

import pytest

from console.preview_window import PreviewWindow
from engine.devices import DeviceMonitor
from engine.spec import JobSpec

from worker_runs import TINY_TRAIN_ARGS

pytestmark = pytest.mark.slow


def window_for(qtbot, run_dir, data_yaml, **train_args):
    spec = JobSpec(model="yolov8n.yaml", data=str(data_yaml), run_dir=str(run_dir),
                   train_args={**TINY_TRAIN_ARGS, **train_args}, device="cpu",
                   config_dir=str(run_dir.parent / ".ultralytics"))
    window = PreviewWindow(spec, "test job", DeviceMonitor(cpu_slots=1, use_nvml=False))
    window.quiet_close = True
    qtbot.addWidget(window)
    return window


def test_history_of_a_finished_run_is_restored(qtbot, tmp_path, tiny_dataset, baseline_run):
    run_dir = tmp_path / "run"
    shutil.copytree(baseline_run, run_dir)
    window = window_for(qtbot, run_dir, tiny_dataset)
    assert window.state == "Finished"
    xs, ys = window.loss_curves["box_loss"].getData()
    assert list(xs) == list(range(1, 25)), "3 epochs x 8 batches, no gaps"
    mx, my = window.metric_curves["mAP50-95"].getData()
    assert list(mx) == [1, 2, 3]
    assert not window.start_action.isEnabled()


def test_pause_saves_state_and_resume_continues(qtbot, tmp_path, tiny_dataset):
    window = window_for(qtbot, tmp_path / "run", tiny_dataset, epochs=2)
    window.show()
    window.start()
    qtbot.waitUntil(lambda: len(window.loss_points["box_loss"][0]) >= 3, timeout=120_000)
    window.pause()
    qtbot.waitUntil(lambda: window.state == "Paused", timeout=120_000)
    paused_at = len(window.loss_points["box_loss"][0])
    assert window.worker.has_checkpoint()
    assert window.start_action.isEnabled()

    window.start()
    qtbot.waitUntil(lambda: window.state == "Finished", timeout=180_000)
    xs = window.loss_points["box_loss"][0]
    assert xs == list(range(1, 17)), f"paused after {paused_at} batches; every batch appears exactly once"
    assert window.metric_points["mAP50"][0] == [1, 2]
    window.shutdown()
