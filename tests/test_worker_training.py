"""The worker trains the generated dataset for real and reports through its event stream."""
import pytest

from engine import protocol

from worker_runs import events_of

pytestmark = pytest.mark.slow


def test_trains_and_streams_batch_and_epoch_events(baseline_run):
    events = events_of(baseline_run)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert all("ts" in e for e in events)

    batches = [e for e in events if e["event"] == "batch"]
    assert len(batches) == 3 * 8, "3 epochs of 8 batches"
    assert [(b["epoch"], b["batch"]) for b in batches[:9]] == [(0, i) for i in range(8)] + [(1, 0)]
    assert set(batches[0]["losses"]) == {"box_loss", "cls_loss", "dfl_loss"}
    assert all(b["lr"] >= 0 for b in batches)

    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    for e in epochs:
        for key in ("precision", "recall", "mAP50", "mAP50-95"):
            assert 0.0 <= e[key] <= 1.0
    finished = events[-1]
    assert finished["epochs"] == 3


def test_run_folder_keeps_ultralytics_layout(baseline_run):
    from ultralytics import YOLO

    for name in ("args.yaml", "results.csv", "weights/last.pt", "weights/best.pt", protocol.EVENTS_FILE):
        assert (baseline_run / name).is_file(), name
    assert not (baseline_run / protocol.RESUME_CHECKPOINT).exists(), "a finished job leaves nothing to resume"
    assert not list((baseline_run / "weights").glob("*.saving")), "weights are staged, then renamed into place"
    rows = (baseline_run / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3
    for weights in ("best.pt", "last.pt"):
        model = YOLO(str(baseline_run / "weights" / weights))
        assert model.task == "detect"
        assert set(model.names.values()) == {"scratch", "dent", "crack"}
