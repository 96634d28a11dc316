"""Engine settings: the policy's rules plus how the engine carries them out. Stored in the
database (so the CLI, the console and a restart all see the same values), with safe defaults."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from .cluster_policy import ROUTE_PROTECTED, ROUTE_URGENT_NO_PREEMPT, ROUTES
from .policy import Rules


OPTIONAL_ROUTES = (ROUTE_PROTECTED, ROUTE_URGENT_NO_PREEMPT)  # a cluster may have no such partition


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    # Policy (see engine.policy.Rules and docs/scheduling.md)
    aging_interval_s: float = 3600.0
    aging_max_boost: int = 1
    daily_preemption_cap: int = 3
    max_preemptions_per_job: int = 2
    min_runtime_s: float = 120.0
    reserved_device: str | None = None        # a device id kept free for urgent jobs, or None
    # Execution
    stop_grace_s: float = 60.0                # SIGTERM -> SIGKILL deadline for a stopping worker
    safety_checkpoint_interval_s: float = 900.0  # SIGUSR1 to every running worker; <= 0 turns it off
    warm_standby: bool = True                 # keep one worker with torch imported, for urgent jobs
    lost_worker_limit: int = 3                # a job whose worker vanished this many times fails
    keep_final_state: bool = False            # keep weights/final_state.pt (raw model, EMA, optimizer) per job
    tick_s: float = 0.25                      # how often the engine looks at the store and workers
    # HTTP API (engine/api): loopback only unless changed; every request needs a bearer token
    api_enabled: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = 8765                      # 0 = any free port (recorded in the store's meta as api_url)
    # A Slurm pool beside the local devices (docs/slurm.md); jobs go there with device preference "slurm"
    slurm_enabled: bool = False
    slurm_conf: str | None = None             # SLURM_CONF for the client commands (default: Slurm's own)
    slurm_partitions: dict | None = None      # route -> partition; default urgent: high, others: low (docs/slurm.md)
    slurm_cpus_per_task: int | None = None
    slurm_gpus_per_job: int = 0

    def rules(self, preemptions_today: int) -> Rules:
        return Rules(
            aging_interval_s=self.aging_interval_s,
            aging_max_boost=self.aging_max_boost,
            daily_preemption_cap=self.daily_preemption_cap,
            preemptions_today=preemptions_today,
            max_preemptions_per_job=self.max_preemptions_per_job,
            min_runtime_s=self.min_runtime_s,
            reserve_device_for_urgent=self.reserved_device is not None,
        )

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "EngineSettings":
        """Known keys only, each checked; unknown keys are ignored (a newer version wrote them)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key in fields:
                kwargs[key] = value
        settings = cls(**kwargs)
        problems = settings.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return settings

    def problems(self) -> list[str]:
        out = []
        for name, low, high in (("aging_interval_s", None, 30 * 86400.0), ("min_runtime_s", 0.0, 7 * 86400.0),
                                ("safety_checkpoint_interval_s", None, 7 * 86400.0),
                                ("stop_grace_s", 0.001, 3600.0), ("tick_s", 0.01, 10.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                out.append(f"{name}: must be a number of seconds")
            elif (low is not None and value < low) or value > high:
                bounds = f"between {low:g} and {high:g}" if low is not None else f"at most {high:g}"
                out.append(f"{name}: must be {bounds} seconds, got {value:g}")
        for name, high in (("aging_max_boost", 2), ("daily_preemption_cap", 1000), ("max_preemptions_per_job", 1000),
                           ("lost_worker_limit", 100)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                out.append(f"{name}: must be a whole number from 0 to {high}, got {value!r}")
        if isinstance(self.api_port, bool) or not isinstance(self.api_port, int) or not 0 <= self.api_port <= 65535:
            out.append(f"api_port: must be a port number from 0 to 65535, got {self.api_port!r}")
        if not isinstance(self.api_host, str) or not self.api_host.strip():
            out.append("api_host: must be an address such as 127.0.0.1")
        if self.slurm_partitions is not None and (
                not isinstance(self.slurm_partitions, dict) or not set(self.slurm_partitions) <= set(ROUTES)
                or not all((isinstance(v, str) and v.strip()) or (v is None and k in OPTIONAL_ROUTES)
                           for k, v in self.slurm_partitions.items())):
            out.append(f"slurm_partitions: a mapping from {'/'.join(ROUTES)} to partition names "
                       f"(only {' and '.join(OPTIONAL_ROUTES)} may be none)")
        for name in ("warm_standby", "keep_final_state", "api_enabled", "slurm_enabled"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name}: must be true or false")
        if self.reserved_device is not None and (not isinstance(self.reserved_device, str) or not self.reserved_device):
            out.append("reserved_device: must be a device id such as gpu0 or cpu1, or none")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
