"""Bad input fails fast with a specific, readable error, a non-zero status, and no network use."""
import shutil
from pathlib import Path

import pytest

from engine import protocol
from engine.spec import JobSpec

from worker_runs import TINY_TRAIN_ARGS, events_of, run_worker


def copy_dataset(src_yaml: Path, dst: Path) -> Path:
    shutil.copytree(src_yaml.parent, dst)
    yaml_path = dst / "data.yaml"
    yaml_path.write_text(yaml_path.read_text().replace(str(src_yaml.parent), str(dst)))
    return yaml_path


def run_bad(tmp_path, *, model="yolov8n.yaml", data=None, device="cpu", **train_args):
    run_dir = tmp_path / "run"
    spec = JobSpec(model=model, data=str(data), run_dir=str(run_dir), device=device,
                   train_args={**TINY_TRAIN_ARGS, **train_args}, config_dir=str(tmp_path / "cfg"))
    spec.save(run_dir / protocol.SPEC_FILE)
    rc = run_worker(run_dir / protocol.SPEC_FILE, timeout=120)
    failed = events_of(run_dir, "failed")
    assert failed, (run_dir / protocol.LOG_FILE).read_text()[-2000:]
    assert not events_of(run_dir, "batch"), "nothing may train on bad input"
    return rc, failed[-1]


def test_missing_data_yaml(tmp_path):
    rc, failed = run_bad(tmp_path, data=tmp_path / "nowhere" / "data.yaml")
    assert rc == protocol.EXIT_BAD_INPUT
    assert failed["kind"] == "bad_input"
    assert f"data.yaml not found: {tmp_path / 'nowhere' / 'data.yaml'}" in failed["error"]


def test_malformed_data_yaml(tmp_path):
    bad = tmp_path / "data.yaml"
    bad.write_text("train: images/train\nval: [unclosed\nnames: {0: a}\n")
    rc, failed = run_bad(tmp_path, data=bad)
    assert rc == protocol.EXIT_BAD_INPUT
    assert "is not valid YAML (line" in failed["error"]


def test_missing_image_folder(tmp_path, tiny_dataset):
    data = copy_dataset(tiny_dataset, tmp_path / "ds")
    shutil.rmtree(tmp_path / "ds" / "images" / "val")
    rc, failed = run_bad(tmp_path, data=data)
    assert rc == protocol.EXIT_BAD_INPUT
    assert f"val images not found: {tmp_path / 'ds' / 'images' / 'val'}" in failed["error"]


def test_label_with_out_of_range_class(tmp_path, tiny_dataset):
    data = copy_dataset(tiny_dataset, tmp_path / "ds")
    label = sorted((tmp_path / "ds" / "labels" / "train").glob("*.txt"))[1]
    label.write_text(label.read_text() + "7 0.5 0.5 0.2 0.2\n")
    rc, failed = run_bad(tmp_path, data=data)
    assert rc == protocol.EXIT_BAD_INPUT
    assert f"train label {label}" in failed["error"]
    assert "class 7 is out of range: data.yaml names 3 classes (0-2)" in failed["error"]


def test_missing_model_file(tmp_path, tiny_dataset):
    rc, failed = run_bad(tmp_path, data=tiny_dataset, model=str(tmp_path / "models" / "line3.pt"))
    assert rc == protocol.EXIT_BAD_INPUT
    assert f"model file not found: {tmp_path / 'models' / 'line3.pt'}" in failed["error"]


def test_hub_weight_name_is_never_downloaded(tmp_path, tiny_dataset):
    rc, failed = run_bad(tmp_path, data=tiny_dataset, model="yolov8n.pt")
    assert rc == protocol.EXIT_BAD_INPUT
    assert "Cutline never downloads weights" in failed["error"]


@pytest.mark.parametrize(
    "args, expected",
    [
        ({"epochs": 0}, "epochs: must be an integer >= 1, got 0"),
        ({"imgsz": -64}, "imgsz: must be a positive image size of at least 32 pixels, got -64"),
        ({"batch": 0}, "batch: must be a batch size >= 1"),
        ({"epocs": 3}, "unknown training argument 'epocs' (did you mean 'epochs'?)"),
    ],
)
def test_impossible_arguments(tmp_path, tiny_dataset, args, expected):
    rc, failed = run_bad(tmp_path, data=tiny_dataset, **args)
    assert rc == protocol.EXIT_BAD_INPUT
    assert expected in failed["error"]
    assert failed["problems"][0]["field"] == next(iter(args))


@pytest.mark.parametrize(
    "device, expected",
    [
        ("cuda:7", "unknown device 'cuda:7': expected 'cpu' or a GPU index such as '0'"),
        ("3", "device '3' is not available: "),
    ],
)
def test_unknown_device(tmp_path, tiny_dataset, device, expected):
    rc, failed = run_bad(tmp_path, data=tiny_dataset, device=device)
    assert rc == protocol.EXIT_BAD_INPUT
    assert expected in failed["error"]


def test_unreadable_spec_file(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text("{not json")
    assert run_worker(spec, timeout=60) == protocol.EXIT_BAD_INPUT
