"""Devices a training job can run on, and how busy they are.

NVIDIA GPUs are found and watched through NVML (the `pynvml` module of nvidia-ml-py). Where NVML
is missing or finds no GPU -- a machine without the driver, like the development boxes -- the CPU is
offered as `cpu_slots` device slots and watched with psutil, and everything else works the same.

Pure of configuration: the caller decides how many CPU slots there are (the engine config reads
CUTLINE_CPU_SLOTS). Monitoring never raises from `sample()`: a metric NVML can't read is None.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any, Literal

import psutil

__all__ = ["Device", "DeviceMonitor", "DeviceSample"]

DeviceKind = Literal["gpu", "cpu"]


@dataclasses.dataclass(frozen=True)
class Device:
    """One place a worker can train: a GPU (NVML index) or a CPU slot."""

    id: str                    # "gpu0", "cpu0", ...: stable key for the engine, the store and the UI
    kind: DeviceKind
    name: str
    index: int                 # NVML index for a GPU (PCI bus order); slot number for a CPU slot
    memory_total: int | None = None  # bytes

    def __post_init__(self) -> None:
        if self.kind not in ("gpu", "cpu"):
            raise ValueError(f"device kind must be 'gpu' or 'cpu', got {self.kind!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"device index must be an int >= 0, got {self.index!r}")

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    def worker_env(self) -> dict[str, str]:
        """Environment variables that confine a worker process to this device.

        A GPU worker sees exactly one CUDA device. CUDA numbers devices fastest-first by default
        while NVML numbers them by PCI bus, so the order is pinned to PCI_BUS_ID to make the NVML
        index name the same card. A CPU slot hides every GPU.
        """
        if self.kind == "gpu":
            return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(self.index)}
        return {"CUDA_VISIBLE_DEVICES": ""}

    @property
    def train_device(self) -> str:
        """The Ultralytics `device=` argument for a worker started with `worker_env()`.

        "0" for a GPU: CUDA_VISIBLE_DEVICES leaves one visible device, renumbered 0.
        """
        return "0" if self.kind == "gpu" else "cpu"


@dataclasses.dataclass(frozen=True)
class DeviceSample:
    """One reading of one device. Any metric that couldn't be read is None."""

    device_id: str
    ts: float                          # epoch seconds
    utilization: float | None          # percent, 0-100
    memory_used: int | None            # bytes
    memory_total: int | None           # bytes
    temperature_c: float | None = None
    power_w: float | None = None
    pids: tuple[int, ...] = ()         # processes using it (NVML compute processes; empty for CPU slots)

    @property
    def memory_fraction(self) -> float | None:
        if self.memory_used is None or not self.memory_total:
            return None
        return self.memory_used / self.memory_total


class DeviceMonitor:
    """Discovers devices once, then samples them on demand (from any one thread at a time)."""

    def __init__(self, cpu_slots: int = 1, use_nvml: bool = True) -> None:
        if isinstance(cpu_slots, bool) or not isinstance(cpu_slots, int) or cpu_slots < 1:
            raise ValueError(f"cpu_slots must be an int >= 1, got {cpu_slots!r}")
        self._cpu_slots = cpu_slots
        self._nvml: Any = None        # the pynvml module while NVML is initialised
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.backend: Literal["nvml", "cpu"]
        self.backend_note: str

        gpus: list[Device] = []
        why = "NVML disabled"
        if use_nvml:
            gpus, why = self._discover_nvml()
        if gpus:
            self.devices: tuple[Device, ...] = tuple(gpus)
            self.backend = "nvml"
            self.backend_note = why
        else:
            self.devices = self._cpu_devices(cpu_slots)
            self.backend = "cpu"
            slots = f"{cpu_slots} CPU slot" + ("s" if cpu_slots != 1 else "")
            self.backend_note = f"{why}; using {slots}"
        try:
            psutil.cpu_percent(interval=None)  # prime: the first non-blocking reading is meaningless
        except Exception:
            pass

    # ------------------------------------------------------------------ discovery

    def _discover_nvml(self) -> tuple[list[Device], str]:
        try:
            import pynvml
        except ImportError as exc:
            return [], f"NVML unavailable: pynvml not installed ({exc})"
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError (no driver, no library, ...) or a broken binding
            return [], f"NVML unavailable: {_describe(exc)}"
        try:
            count = pynvml.nvmlDeviceGetCount()
        except Exception as exc:
            self._shutdown(pynvml)
            return [], f"NVML unavailable: counting GPUs failed: {_describe(exc)}"
        devices: list[Device] = []
        skipped: list[str] = []
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:
                skipped.append(f"GPU {index} ({_describe(exc)})")
                continue
            name = _guard(lambda: _text(pynvml.nvmlDeviceGetName(handle))) or f"GPU {index}"
            total = _guard(lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).total))
            device = Device(id=f"gpu{index}", kind="gpu", name=name, index=index, memory_total=total)
            devices.append(device)
            self._handles[device.id] = handle
        if not devices:
            self._shutdown(pynvml)
            found = "NVML found no GPUs" if count == 0 else "NVML could not open any GPU"
            return [], found + (f": {', '.join(skipped)}" if skipped else "")
        self._nvml = pynvml
        driver = _guard(lambda: _text(pynvml.nvmlSystemGetDriverVersion()))
        note = f"{len(devices)} NVIDIA GPU{'s' if len(devices) != 1 else ''} through NVML"
        if driver:
            note += f" (driver {driver})"
        if skipped:
            note += f"; skipped {', '.join(skipped)}"
        return devices, note

    @staticmethod
    def _cpu_devices(slots: int) -> tuple[Device, ...]:
        model = _cpu_model()
        cores = os.cpu_count() or 1
        total = _guard(lambda: int(psutil.virtual_memory().total))
        devices = []
        for i in range(slots):
            name = f"CPU ({model}, {cores} threads)" if slots == 1 else f"CPU slot {i + 1}/{slots} ({model})"
            devices.append(Device(id=f"cpu{i}", kind="cpu", name=name, index=i, memory_total=total))
        return tuple(devices)

    # ------------------------------------------------------------------ monitoring

    def device(self, device_id: str) -> Device:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(f"no device {device_id!r}; known: {', '.join(d.id for d in self.devices)}")

    def sample(self) -> list[DeviceSample]:
        """One reading per device, in `devices` order. Never raises for a metric it can't read."""
        now = time.time()
        with self._lock:
            if self.backend == "nvml":
                return [self._sample_gpu(d, now) for d in self.devices]
            return self._sample_cpu(now)

    def _sample_gpu(self, device: Device, now: float) -> DeviceSample:
        nv = self._nvml
        handle = self._handles.get(device.id)
        if nv is None or handle is None:  # closed
            return DeviceSample(device.id, now, None, None, device.memory_total)
        util = _guard(lambda: float(nv.nvmlDeviceGetUtilizationRates(handle).gpu))
        mem = _guard(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        used = _guard(lambda: int(mem.used)) if mem is not None else None
        total = _guard(lambda: int(mem.total)) if mem is not None else device.memory_total
        temp = _guard(lambda: float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)))
        power = _guard(lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0)  # milliwatts
        procs = _guard(lambda: tuple(sorted({int(p.pid) for p in nv.nvmlDeviceGetComputeRunningProcesses(handle)})))
        return DeviceSample(
            device_id=device.id, ts=now, utilization=_percent(util), memory_used=used, memory_total=total,
            temperature_c=temp, power_w=power, pids=procs or (),
        )

    def _sample_cpu(self, now: float) -> list[DeviceSample]:
        # Slots share the one CPU, so every slot reports the machine-wide figures.
        util = _percent(_guard(lambda: float(psutil.cpu_percent(interval=None))))
        vm = _guard(psutil.virtual_memory)
        total = _guard(lambda: int(vm.total)) if vm is not None else None
        # total - available is what programs hold; psutil's `used` leaves out some of that on Linux.
        used = _guard(lambda: max(0, min(int(vm.total - vm.available), int(vm.total)))) if vm is not None else None
        temp = _cpu_temperature()
        return [
            DeviceSample(d.id, now, util, used, total if total is not None else d.memory_total, temp)
            for d in self.devices
        ]

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Shut NVML down (once). Afterwards GPU samples carry no metrics; CPU slots keep working."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            nv, self._nvml = self._nvml, None
            self._handles.clear()
        if nv is not None:
            self._shutdown(nv)

    @staticmethod
    def _shutdown(nv: Any) -> None:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass

    def __enter__(self) -> "DeviceMonitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeviceMonitor(backend={self.backend!r}, devices={[d.id for d in self.devices]})"


def _guard(read: Any) -> Any:
    """Run one metric read; None if it fails for any reason (NVMLError, psutil error, missing API)."""
    try:
        return read()
    except Exception:
        return None


def _percent(value: float | None) -> float | None:
    if value is None or value != value:  # NaN
        return None
    return min(100.0, max(0.0, value))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text and type(exc).__name__ not in text else (text or type(exc).__name__)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip() or "CPU"
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "CPU"


def _cpu_temperature() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
    if reader is None:
        return None
    sensors = _guard(reader)
    if not sensors:
        return None
    for chip in ("coretemp", "k10temp", "zenpower", "cpu_thermal", "acpitz"):
        readings = sensors.get(chip)
        if readings:
            values = [r.current for r in readings if r.current is not None and r.current > 0]
            if values:
                return float(max(values))
    return None
