"""A real single-node Slurm for tests and benchmarks: munged, slurmctld and slurmd started on this
machine with a private config, state and ports, stopped by pid. Three partitions implement Cutline's
priority classes the way docs/slurm.md describes: `low` (preemptible, requeued after a grace time),
`high` (PriorityTier 10, preempts `low`) and `safe` (nothing preempts it: protected jobs, and
urgent ones past the daily cap)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

GRACE_S = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> str | None:
    """Why a local Slurm cannot run here, or None if it can."""
    for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./run-tests installs Slurm)"
    if os.geteuid() != 0:
        return "the local Slurm test cluster needs root (it runs slurmd as root)"
    return None


class LocalSlurm:
    def __init__(self, root: Path, cpus: int | None = None, requeue_exit: int = 75) -> None:
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.requeue_exit = requeue_exit
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.host = socket.gethostname().split(".")[0]

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 30) -> "LocalSlurm":
        for d in (self.root / "state", self.root / "spool"):
            d.mkdir(parents=True, exist_ok=True)
        # munged runs as user munge: its folder must be reachable by it (pytest's temp folders are
        # 0700) and mode 755 (it refuses a socket folder others may write to).
        munge = self.munge = Path(tempfile.mkdtemp(prefix="cutline-munge-"))
        os.chmod(munge, 0o755)
        shutil.chown(munge, "munge", "munge")
        socket_path = munge / "munge.socket"
        self.conf.write_text(self._config(socket_path))
        self._spawn(["runuser", "-u", "munge", "--", "munged", "--foreground", f"--socket={socket_path}",
                     f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                     f"--seed-file={munge / 'munge.seed'}", "--force"], "munged.out")
        self._wait(lambda: socket_path.exists(), 10, "munged")
        env = {**os.environ, **self.env}
        self._spawn(["slurmctld", "-D", "-c", "-f", str(self.conf)], "slurmctld.out", env)
        self._spawn(["slurmd", "-D", "-f", str(self.conf)], "slurmd.out", env)
        self._wait(lambda: self.node_state() in ("idle", "mixed", "allocated"), timeout, "the node to be idle")
        return self

    def _config(self, socket_path: Path) -> str:
        r = self.root
        return f"""ClusterName=cutline
SlurmctldHost={self.host}(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket={socket_path},cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
RequeueExit={self.requeue_exit}
KillWait=5
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=low Nodes={self.host} Default=YES PriorityTier=1 PreemptMode=REQUEUE GraceTime={GRACE_S} MaxTime=INFINITE State=UP
PartitionName=high Nodes={self.host} PriorityTier=10 PreemptMode=OFF MaxTime=INFINITE State=UP
PartitionName=safe Nodes={self.host} PriorityTier=1 PreemptMode=OFF MaxTime=INFINITE State=UP
"""

    def _spawn(self, args: list[str], log: str, env: dict | None = None) -> None:
        out = open(self.root / log, "ab")
        self.procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True))

    def node_state(self) -> str:
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env={**os.environ, **self.env}, capture_output=True,
                                 text=True, timeout=5).stdout.split()
        except (subprocess.TimeoutExpired, OSError):
            return ""
        return out[0].rstrip("*") if out else ""

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.2)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.root.glob("*.out"))
                         + sorted(self.root.glob("*.log")) + sorted(self.munge.glob("*.log")) if p.exists())
        raise RuntimeError(f"local Slurm: timed out waiting for {what}\n{logs}")

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env={**os.environ, **self.env}, capture_output=True,
                       timeout=10)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self.munge, ignore_errors=True)
