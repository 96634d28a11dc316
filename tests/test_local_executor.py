"""The local executor gives each worker exactly its device, in its own session, and one worker per run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import runlock
from engine.devices import Device
from engine.executor import LaunchRequest
from engine.local_executor import LocalExecutor
from engine.spec import JobSpec

from engine_runs import wait_for


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.parametrize(
    "device, expected",
    [
        (Device("cpu1", "cpu", "CPU slot 1", 1), {"CUDA_VISIBLE_DEVICES": ""}),
        (Device("gpu1", "gpu", "GPU 1", 1), {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
    ],
)
def test_each_worker_sees_exactly_its_device_in_its_own_session(tmp_path, tiny_dataset, device, expected):
    executor = LocalExecutor(tmp_path / "home", tmp_path / "home" / "ultralytics", cpu_slots=2, warm_standby=False)
    spec = JobSpec(model="yolov8n.yaml", data=str(tiny_dataset), run_dir=str(tmp_path / "run"),
                   device=device.train_device)
    handle = executor.launch(LaunchRequest(1, spec, device, gated=True))
    pid = handle.record["pid"]
    try:
        env = environ_of(pid)
        for key, value in expected.items():
            assert env[key] == value
        assert env["YOLO_OFFLINE"] == "1"
        if device.kind == "cpu":
            assert env["CUTLINE_TORCH_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
        else:
            assert "CUTLINE_TORCH_THREADS" not in env
        assert os.getpgid(pid) == pid != os.getpgid(0)  # its own process group
        assert JobSpec.load(tmp_path / "run" / "spec.json").device == device.train_device
        wait_for(lambda: runlock.holder(tmp_path / "run"), 30, "the worker to take its run lock")
        assert runlock.holder(tmp_path / "run")["pid"] == pid
        assert executor.adopt(1, str(tmp_path / "run"), None).record["pid"] == pid
    finally:
        executor.kill(handle)
        wait_for(lambda: executor.poll(handle) is not None, 30, "the worker to end")
    assert executor.poll(handle).returncode == -9
    assert runlock.holder(tmp_path / "run") is None  # the kernel dropped the lock with the process
    assert executor.adopt(1, str(tmp_path / "run"), None) is None


def test_a_second_worker_for_the_same_run_refuses_to_start(tmp_path):
    fd = runlock.acquire(tmp_path / "run")
    try:
        with pytest.raises(runlock.RunBusy, match=f"pid {os.getpid()}"):
            runlock.acquire(tmp_path / "run")
    finally:
        os.close(fd)
    os.close(runlock.acquire(tmp_path / "run"))  # free again once the holder is gone
