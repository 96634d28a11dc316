"""The embedded default: the generated surface-defect dataset and a small job that trains on it."""
from __future__ import annotations

from pathlib import Path

from . import paths
from .demo_dataset import generate_dataset
from .spec import JobSpec

# From scratch a tiny model needs a few hundred optimizer steps before mAP rises:
# 256 images, batch 16 and nbs=16 (a step every batch) give a rising mAP within ~10 epochs on CPU.
DEMO_TRAIN_ARGS = {
    "epochs": 30,
    "imgsz": 96,
    "batch": 16,
    "nbs": 16,
    "workers": 0,
    "seed": 0,
    "deterministic": True,
    "plots": False,
    "amp": False,
}


def ensure_demo_dataset(home: Path) -> Path:
    target = paths.demo_dataset_dir(home)
    data_yaml = target / "data.yaml"
    if data_yaml.exists():  # written last by the generator: present means complete
        return data_yaml
    return generate_dataset(target, train=256, val=48, imgsz=96, seed=0)


def demo_job_spec(home: Path) -> JobSpec:
    data_yaml = ensure_demo_dataset(home)
    return JobSpec(
        model="yolov8n.yaml",
        data=str(data_yaml),
        run_dir=str(paths.runs_dir(home) / "demo-surface-defects"),
        train_args=dict(DEMO_TRAIN_ARGS),
        device="cpu",
        config_dir=str(paths.ultralytics_config_dir(home)),
    )


def seed_demo_jobs(ops, home: Path) -> list:
    """First launch (an empty store): two demo jobs on the generated dataset, so a newcomer sees the
    whole flow at once: one trains, one waits behind it (one CPU slot)."""
    if ops.store.jobs():
        return []
    data_yaml = ensure_demo_dataset(home)
    baseline = ops.submit(name="Demo: surface defects, baseline", model="yolov8n.yaml", data=str(data_yaml),
                          train_args=dict(DEMO_TRAIN_ARGS), priority="normal", owner="demo",
                          operator="cutline")
    experiment = ops.submit(name="Demo: stronger augmentation experiment", model="yolov8n.yaml",
                            data=str(data_yaml), train_args={**DEMO_TRAIN_ARGS, "degrees": 10.0, "mixup": 0.1},
                            priority="low", owner="demo", operator="cutline")
    return [baseline, experiment]
