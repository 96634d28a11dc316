"""The demo dataset: layout, label validity, determinism and the command line."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from engine.demo_dataset import CLASS_NAMES, generate_dataset, main, render_image


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every image and label file, keyed by path relative to `root`."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in {".png", ".txt"}
    }


def label_rows(label_dir: Path) -> list[list[str]]:
    return [line.split() for path in sorted(label_dir.glob("*.txt"))
            for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("demo"))


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate_dataset(tmp_path / "a", train=6, val=3, imgsz=64, seed=3)
    generate_dataset(tmp_path / "b", train=6, val=3, imgsz=64, seed=3)
    first, second = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert len(first) == 2 * (6 + 3)
    assert first == second


def test_regenerating_in_place_reproduces_the_files_and_drops_extra_ones(tmp_path):
    generate_dataset(tmp_path, train=5, val=2, imgsz=64, seed=1)
    before = tree_digest(tmp_path)
    generate_dataset(tmp_path, train=9, val=4, imgsz=64, seed=1)
    generate_dataset(tmp_path, train=5, val=2, imgsz=64, seed=1)
    assert tree_digest(tmp_path) == before


def test_different_seed_gives_different_images(tmp_path):
    generate_dataset(tmp_path / "a", train=4, val=2, imgsz=64, seed=0)
    generate_dataset(tmp_path / "b", train=4, val=2, imgsz=64, seed=1)
    first, second = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert first.keys() == second.keys()
    images = [name for name in first if name.endswith(".png")]
    assert all(first[name] != second[name] for name in images)


def test_images_do_not_depend_on_how_many_are_requested(tmp_path):
    generate_dataset(tmp_path / "small", train=3, val=1, imgsz=64, seed=5)
    generate_dataset(tmp_path / "large", train=7, val=5, imgsz=64, seed=5)
    small, large = tree_digest(tmp_path / "small"), tree_digest(tmp_path / "large")
    assert small.items() <= large.items()


@pytest.mark.parametrize(("train", "val", "imgsz"), [(1, 1, 32), (5, 3, 64), (12, 7, 96)])
def test_counts_and_image_size_match_the_arguments(tmp_path, train, val, imgsz):
    generate_dataset(tmp_path, train=train, val=val, imgsz=imgsz, seed=2)
    for split, count in (("train", train), ("val", val)):
        images = sorted((tmp_path / "images" / split).glob("*.png"))
        labels = sorted((tmp_path / "labels" / split).glob("*.txt"))
        assert len(images) == count
        assert [p.stem for p in images] == [p.stem for p in labels]
        for image in images:
            with Image.open(image) as opened:
                assert opened.size == (imgsz, imgsz)
                assert opened.mode == "RGB"


def test_every_label_line_is_a_valid_normalised_box(default_dataset):
    rows = label_rows(default_dataset.parent / "labels" / "train")
    rows += label_rows(default_dataset.parent / "labels" / "val")
    assert len(rows) > 40
    for row in rows:
        assert len(row) == 5, row
        class_id, cx, cy, w, h = int(row[0]), *map(float, row[1:])
        assert 0 <= class_id < len(CLASS_NAMES)
        assert w > 0 and h > 0, row
        assert -1e-6 <= cx - w / 2 and cx + w / 2 <= 1.0 + 1e-6, row
        assert -1e-6 <= cy - h / 2 and cy + h / 2 <= 1.0 + 1e-6, row


def test_every_class_appears_in_the_default_train_split(default_dataset):
    rows = label_rows(default_dataset.parent / "labels" / "train")
    counts = np.bincount([int(row[0]) for row in rows], minlength=len(CLASS_NAMES))
    assert (counts >= 8).all(), dict(zip(CLASS_NAMES, counts.tolist()))


def test_every_class_appears_even_in_a_three_image_split(tmp_path):
    data_yaml = generate_dataset(tmp_path, train=3, val=3, imgsz=64, seed=11)
    for split in ("train", "val"):
        classes = {int(row[0]) for row in label_rows(data_yaml.parent / "labels" / split)}
        assert classes == set(range(len(CLASS_NAMES))), split


def test_defects_are_large_enough_for_a_tiny_model(default_dataset):
    rows = label_rows(default_dataset.parent / "labels" / "train")
    longest_sides = [max(float(row[3]), float(row[4])) for row in rows]
    assert min(longest_sides) >= 0.12
    assert 0.15 <= float(np.median(longest_sides)) <= 0.6


def test_boxes_are_tight_around_the_drawn_defect():
    """Every box edge touches its defect, and outside the boxes the defects barely change a pixel."""
    checked = 0
    for index in range(24):
        marked, defects = render_image(seed=4, split="train", index=index, imgsz=96)
        bare, no_defects = render_image(seed=4, split="train", index=index, imgsz=96,
                                        with_defects=False)
        assert no_defects == []
        change = np.abs(marked.astype(np.int16) - bare.astype(np.int16)).max(axis=2)
        outside = np.ones_like(change, dtype=bool)
        peaks = []
        for defect in defects:
            inside = change[defect.y0:defect.y1, defect.x0:defect.x1]
            outside[defect.y0:defect.y1, defect.x0:defect.x1] = False
            peak = int(inside.max())
            peaks.append(peak)
            assert peak >= 30, (index, defect)
            for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]):
                assert edge.max() >= 0.15 * peak, (index, defect)
            checked += 1
        if defects:
            # Only the faint anti-aliased fringe (under a fifth of the peak change) lies outside.
            assert change[outside].max() <= 0.22 * max(peaks) + 2, index
        else:
            assert change.max() == 0
    assert checked >= 20


def test_data_yaml_describes_the_dataset(default_dataset):
    config = yaml.safe_load(default_dataset.read_text())
    root = Path(config["path"])
    assert root.is_absolute()
    assert root == default_dataset.parent
    assert config["train"] == "images/train"
    assert config["val"] == "images/val"
    assert config["names"] == {0: "scratch", 1: "dent", 2: "crack"}
    for split in ("train", "val"):
        assert (root / config[split]).is_dir()
        assert any((root / config[split]).glob("*.png"))
        assert (root / "labels" / split).is_dir()


def test_relative_output_dir_still_gives_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_yaml = generate_dataset("relative", train=1, val=1, imgsz=32)
    assert data_yaml == tmp_path / "relative" / "data.yaml"
    assert yaml.safe_load(data_yaml.read_text())["path"] == str(tmp_path / "relative")


def test_cli_writes_the_dataset_and_prints_the_yaml_path(tmp_path, capsys):
    out = tmp_path / "cli"
    status = main([str(out), "--train", "4", "--val", "2", "--imgsz", "48", "--seed", "9"])
    assert status == 0
    printed = capsys.readouterr().out.strip()
    assert Path(printed) == out / "data.yaml"
    assert Path(printed).is_file()
    assert len(list((out / "images" / "train").glob("*.png"))) == 4
    assert len(list((out / "images" / "val").glob("*.png"))) == 2
    reference = tmp_path / "api"
    generate_dataset(reference, train=4, val=2, imgsz=48, seed=9)
    assert tree_digest(out) == tree_digest(reference)


def test_cli_rejects_bad_arguments_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), "--imgsz", "16"])
    assert exited.value.code == 2
    assert "imgsz" in capsys.readouterr().err
    assert not (tmp_path / "data.yaml").exists()


@pytest.mark.parametrize(("arguments", "named"), [
    ({"train": 0}, "train"),
    ({"train": -3}, "train"),
    ({"val": 0}, "val"),
    ({"imgsz": 31}, "imgsz"),
    ({"imgsz": 0}, "imgsz"),
    ({"seed": -1}, "seed"),
    ({"train": 2.5}, "train"),
    ({"val": True}, "val"),
])
def test_impossible_arguments_raise_value_error_naming_the_argument(tmp_path, arguments, named):
    with pytest.raises(ValueError, match=rf"^{named}\b"):
        generate_dataset(tmp_path, **arguments)
    assert not any(tmp_path.iterdir()), "nothing may be written for rejected arguments"
