"""Device discovery and monitoring. These machines have no NVIDIA driver, so NVML really fails and the
CPU is offered as slots; on a machine with a driver the same tests check the GPU path instead."""
from __future__ import annotations

import os
import time

import pytest

from engine.devices import Device, DeviceMonitor, DeviceSample


@pytest.fixture
def monitor():
    m = DeviceMonitor(cpu_slots=3)
    yield m
    m.close()


def nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


HAS_NVML = nvml_works()


def assert_sane(sample: DeviceSample, device: Device, before: float) -> None:
    assert sample.device_id == device.id
    assert before <= sample.ts <= time.time()
    if sample.utilization is not None:
        assert 0.0 <= sample.utilization <= 100.0
    if sample.memory_used is not None:
        assert sample.memory_total is not None
        assert 0 <= sample.memory_used <= sample.memory_total
    assert isinstance(sample.pids, tuple)
    assert all(isinstance(p, int) for p in sample.pids)


@pytest.mark.skipif(HAS_NVML, reason="this machine has a working NVIDIA driver")
def test_without_nvml_the_cpu_is_offered_as_slots(monitor):
    assert monitor.backend == "cpu"
    assert "NVML" in monitor.backend_note
    assert monitor.backend_note.startswith("NVML unavailable: ")
    assert monitor.backend_note.endswith("using 3 CPU slots")
    assert [d.id for d in monitor.devices] == ["cpu0", "cpu1", "cpu2"]
    assert [d.index for d in monitor.devices] == [0, 1, 2]
    assert all(d.kind == "cpu" for d in monitor.devices)
    assert all(d.memory_total and d.memory_total > 0 for d in monitor.devices)
    assert len({d.name for d in monitor.devices}) == 3  # the devices strip can tell them apart


@pytest.mark.skipif(HAS_NVML, reason="this machine has a working NVIDIA driver")
def test_cpu_samples_have_sane_values(monitor):
    before = time.time()
    _ = sum(i * i for i in range(200_000))  # some CPU work between readings
    samples = monitor.sample()
    assert [s.device_id for s in samples] == [d.id for d in monitor.devices]
    for s, d in zip(samples, monitor.devices):
        assert_sane(s, d, before)
        assert s.utilization is not None and s.memory_used is not None
        assert s.memory_total == d.memory_total
        assert s.pids == ()  # the engine knows its own workers
        assert s.power_w is None
        assert 0 < s.memory_fraction <= 1
    again = monitor.sample()
    assert len(again) == 3 and again[0].ts >= samples[0].ts


def test_cpu_slot_environment_and_train_device():
    slot = DeviceMonitor(cpu_slots=2, use_nvml=False).devices[1]
    assert slot.worker_env() == {"CUDA_VISIBLE_DEVICES": ""}
    assert slot.train_device == "cpu"
    assert not slot.is_gpu


def test_use_nvml_false_never_touches_nvml():
    with DeviceMonitor(cpu_slots=2, use_nvml=False) as m:
        assert m.backend == "cpu"
        assert m.backend_note == "NVML disabled; using 2 CPU slots"
        assert [d.id for d in m.devices] == ["cpu0", "cpu1"]
        assert len(m.sample()) == 2
    m.close()  # idempotent
    assert len(m.sample()) == 2  # CPU slots keep working after close


def test_single_slot_note_is_singular():
    m = DeviceMonitor(use_nvml=False)
    assert m.backend_note == "NVML disabled; using 1 CPU slot"
    assert m.device("cpu0") is m.devices[0]
    with pytest.raises(KeyError, match="no device 'gpu0'"):
        m.device("gpu0")


@pytest.mark.parametrize("slots", [0, -1, 1.5, "2", True])
def test_bad_slot_counts_raise(slots):
    with pytest.raises(ValueError, match="cpu_slots must be an int >= 1"):
        DeviceMonitor(cpu_slots=slots, use_nvml=False)


def test_gpu_device_environment_maps_to_one_visible_device():
    gpu = Device(id="gpu3", kind="gpu", name="NVIDIA H200", index=3, memory_total=141 * 2**30)
    env = gpu.worker_env()
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # NVML's numbering, not CUDA's fastest-first
    assert gpu.train_device == "0"  # the one visible device is renumbered 0
    assert gpu.is_gpu
    assert Device(id="gpu0", kind="gpu", name="x", index=0).worker_env()["CUDA_VISIBLE_DEVICES"] == "0"


def test_worker_env_is_a_fresh_dict():
    gpu = Device(id="gpu1", kind="gpu", name="x", index=1)
    gpu.worker_env()["CUDA_VISIBLE_DEVICES"] = "7"
    assert gpu.worker_env()["CUDA_VISIBLE_DEVICES"] == "1"
    env = {**os.environ, **gpu.worker_env()}
    assert env["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.parametrize(
    "kwargs",
    [dict(kind="tpu", index=0), dict(kind="gpu", index=-1), dict(kind="cpu", index=True)],
)
def test_device_validates(kwargs):
    with pytest.raises(ValueError):
        Device(id="x", name="x", **kwargs)


def test_device_is_frozen_and_hashable():
    d = Device(id="cpu0", kind="cpu", name="CPU", index=0)
    with pytest.raises(AttributeError):
        d.index = 1  # type: ignore[misc]
    assert {d: "free"}[Device(id="cpu0", kind="cpu", name="CPU", index=0)] == "free"


@pytest.mark.skipif(not HAS_NVML, reason="no NVIDIA driver on this machine")
def test_with_nvml_gpus_are_found_and_sampled():
    with DeviceMonitor(cpu_slots=2) as m:
        assert m.backend == "nvml"
        assert "NVML" in m.backend_note
        assert all(d.kind == "gpu" and d.id == f"gpu{d.index}" for d in m.devices)
        before = time.time()
        for s, d in zip(m.sample(), m.devices):
            assert_sane(s, d, before)
            assert s.memory_total
    samples = m.sample()  # after close: no metrics, no exception
    assert all(s.utilization is None for s in samples)


@pytest.mark.skipif(HAS_NVML, reason="needs NVML absent: drives the real, uninitialised pynvml")
def test_failing_nvml_calls_become_none_never_exceptions():
    import pynvml

    m = DeviceMonitor(use_nvml=False)
    gpu = Device(id="gpu0", kind="gpu", name="GPU 0", index=0, memory_total=123)
    # Point the monitor at the real pynvml without nvmlInit: every metric call raises NVMLError.
    m.devices, m.backend = (gpu,), "nvml"
    m._nvml, m._handles = pynvml, {"gpu0": pynvml.c_nvmlDevice_t()}
    with pytest.raises(pynvml.NVMLError):
        pynvml.nvmlDeviceGetUtilizationRates(m._handles["gpu0"])
    (s,) = m.sample()
    assert (s.device_id, s.utilization, s.memory_used, s.memory_total) == ("gpu0", None, None, 123)
    assert (s.temperature_c, s.power_w, s.pids) == (None, None, ())
