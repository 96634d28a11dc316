"""What the training worker costs: startup, preemption, and throughput next to a bare `yolo train`.

    .venv/bin/python bench/bench_worker.py [--epochs 3] [--train 64] [--val 16] [--imgsz 64]
                                           [--batch 8] [--repeats 3] [--json out.json]

Everything runs for real: the worker is `python -m engine.worker SPEC_JSON` in a subprocess, the
baseline is the `yolo` command line, both on the CPU, on the synthetic demo dataset written into a
temporary folder (removed afterwards). Nothing is mocked.

1. Startup. Just before each worker's Popen the bench takes time.time(); the worker's events carry
   wall-clock `ts`, so `started.ts - t0` and `first batch.ts - t0` are the time from process start
   to the worker being ready and to the first trained batch. The worker's own `import_seconds`
   (until torch and the trainer are imported) and `setup_seconds` (until the trainer is built) come
   from its `started` event. Every worker run of the bench (throughput and preemption) is a sample.
2. Preemption. A fresh run is started; once a few `batch` events are in events.jsonl the bench sends
   SIGTERM and measures SIGTERM -> `checkpoint` event (written after the atomic rename, so the
   checkpoint is on disk; includes finishing the batch in progress), SIGTERM -> `preempted` event,
   and SIGTERM -> process exit (wait()). The checkpoint's size comes from the event's `bytes` and
   from os.path.getsize(weights/resume.pt); its write time from the event's `seconds`. Repeated
   --repeats times; median and max are printed.
3. Throughput. The worker and `yolo train` get identical arguments (val=False, so only the final
   epoch validates) and the same offline environment (YOLO_OFFLINE=1, YOLO_CONFIG_DIR in the temp
   folder holding matplotlib's DejaVu Sans as Arial.ttf). They run in the order worker, bare, bare,
   worker to spread drift (other load on the machine) over both. Three figures per run:
     - wall: Popen to exit (imports, setup, training, final validation, saving), with the ratio
       worker/bare of the medians;
     - loop: results.csv's `time` column (seconds since the trainer's train start, taken the same
       way by both) in epoch E-1's row: the batches of the first E-1 epochs and the weights saved
       after the first E-2, with no validation in it, as images/second; needs --epochs 2 or more;
     - batch phase (worker only): first to last `batch` event, over the images of the batches after
       the first, as images/second.
The 1-minute load average is recorded at the start of every run: the CPUs may be shared.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import protocol  # noqa: E402
from engine.demo_dataset import generate_dataset  # noqa: E402
from engine.events import EventTail, read_events  # noqa: E402
from engine.spec import JobSpec  # noqa: E402

MODEL = "yolov8n.yaml"
DEVICE = "cpu"
PREEMPT_AFTER_BATCHES = 3  # SIGTERM once this many batches of the run have been trained
RUN_TIMEOUT_S = 1800
POLL_S = 0.005


# --------------------------------------------------------------------------- setup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=64, help="training images")
    parser.add_argument("--val", type=int, default=16, help="validation images")
    parser.add_argument("--imgsz", type=int, default=64, help="image side of the dataset and of training")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="preemption measurements")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def shared_train_args(args: argparse.Namespace) -> dict:
    """The arguments both the worker and the bare `yolo train` get (besides model, data, device, folders)."""
    return {
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "workers": 0,
        "seed": 0,
        "deterministic": True,
        "plots": False,
        "amp": False,
        "val": False,
    }


def machine_info() -> dict:
    import torch
    import ultralytics

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "ultralytics": ultralytics.__version__,
    }


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def prepare_config_dir(config_dir: Path) -> None:
    """What the worker's _prepare_offline_environment does, for the bare run: no font download."""
    import matplotlib

    config_dir.mkdir(parents=True, exist_ok=True)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copyfile(font, config_dir / name)


def run_environment(config_dir: Path) -> dict[str, str]:
    """The same offline environment for both: the one the worker sets for itself."""
    env = protocol.worker_environment(None, str(config_dir))
    env["PYTHONPATH"] = str(REPO)
    return env


def yolo_executable() -> str:
    beside_python = Path(sys.executable).parent / "yolo"
    return str(beside_python) if beside_python.exists() else shutil.which("yolo") or "yolo"


# --------------------------------------------------------------------------- running


def start_worker(run_dir: Path, data_yaml: Path, config_dir: Path, train_args: dict) -> tuple[subprocess.Popen, float]:
    """Write the spec and start the worker; returns the process and the wall clock just before Popen."""
    spec = JobSpec(model=MODEL, data=str(data_yaml), run_dir=str(run_dir), train_args=train_args,
                   device=DEVICE, config_dir=str(config_dir))
    spec_path = run_dir / protocol.SPEC_FILE
    spec.save(spec_path)
    log = open(run_dir / protocol.LOG_FILE, "ab")
    started_at = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "engine.worker", str(spec_path)], env=run_environment(config_dir),
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    log.close()
    return proc, started_at


def wait_or_kill(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_worker(run_dir: Path, data_yaml: Path, config_dir: Path, args: argparse.Namespace) -> dict:
    load = load1()
    t0 = time.perf_counter()
    proc, started_at = start_worker(run_dir, data_yaml, config_dir, shared_train_args(args))
    returncode = wait_or_kill(proc)
    wall = time.perf_counter() - t0
    expect_exit(returncode, protocol.EXIT_FINISHED, run_dir / protocol.LOG_FILE)
    events = read_events(run_dir / protocol.EVENTS_FILE)
    images_per_epoch = single(events, "training")["images"]
    return {
        "kind": "worker",
        "load1": load,
        "wall_s": wall,
        "loop": loop_throughput(run_dir / "results.csv", images_per_epoch, args.epochs),
        "batch_phase": batch_phase_throughput(events, images_per_epoch, args.batch),
        "startup": startup_figures(events, started_at),
    }


def run_bare_yolo(project: Path, name: str, data_yaml: Path, config_dir: Path, args: argparse.Namespace) -> dict:
    train_args = {**shared_train_args(args), "model": MODEL, "data": str(data_yaml), "device": DEVICE,
                  "project": str(project), "name": name, "exist_ok": True}
    command = [yolo_executable(), "train", *(f"{key}={value}" for key, value in train_args.items())]
    log_path = project / f"{name}.log"
    project.mkdir(parents=True, exist_ok=True)
    load = load1()
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, env=run_environment(config_dir), stdout=log, stderr=subprocess.STDOUT,
                                cwd=project)
        returncode = wait_or_kill(proc)
        wall = time.perf_counter() - t0
    expect_exit(returncode, 0, log_path)
    return {
        "kind": "bare",
        "load1": load,
        "wall_s": wall,
        "loop": loop_throughput(project / name / "results.csv", args.train, args.epochs),
    }


def preempt_once(run_dir: Path, data_yaml: Path, config_dir: Path, args: argparse.Namespace) -> dict:
    load = load1()
    proc, started_at = start_worker(run_dir, data_yaml, config_dir, shared_train_args(args))
    wait_for_batches(proc, run_dir / protocol.EVENTS_FILE, PREEMPT_AFTER_BATCHES)
    signalled_at = time.time()
    signalled = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    returncode = wait_or_kill(proc)
    to_exit = time.perf_counter() - signalled
    expect_exit(returncode, protocol.EXIT_PREEMPTED, run_dir / protocol.LOG_FILE)

    events = read_events(run_dir / protocol.EVENTS_FILE)
    checkpoint = single(events, "checkpoint")
    batches = events_named(events, "batch")
    batch_seconds = [later["ts"] - earlier["ts"] for earlier, later in zip(batches, batches[1:])]
    return {
        "load1": load,
        "batches_before_signal": sum(1 for e in batches if e["ts"] <= signalled_at),
        "checkpoint_at": f"epoch {checkpoint['epoch'] + 1}, {checkpoint['batch']}/{checkpoint['batches']}",
        "to_checkpoint_s": checkpoint["ts"] - signalled_at,
        "to_preempted_event_s": single(events, "preempted")["ts"] - signalled_at,
        "to_exit_s": to_exit,
        "checkpoint_write_s": checkpoint["seconds"],
        "checkpoint_event_mb": checkpoint["bytes"] / 1e6,
        "checkpoint_file_mb": os.path.getsize(run_dir / protocol.RESUME_CHECKPOINT) / 1e6,
        "median_batch_s": statistics.median(batch_seconds) if batch_seconds else None,
        "startup": startup_figures(events, started_at),
    }


def wait_for_batches(proc: subprocess.Popen, events_path: Path, count: int) -> None:
    tail = EventTail(events_path)
    seen = 0
    deadline = time.perf_counter() + RUN_TIMEOUT_S
    while seen < count:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}) before {count} batches; see {events_path.parent}")
        if time.perf_counter() > deadline:
            proc.kill()
            raise RuntimeError(f"no {count} batches within {RUN_TIMEOUT_S} s")
        seen += sum(1 for e in tail.read_new() if e["event"] == "batch")
        time.sleep(POLL_S)


def expect_exit(returncode: int, expected: int, log_path: Path) -> None:
    if returncode != expected:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        raise RuntimeError(f"exit status {returncode} ({protocol.describe_exit(returncode)}), "
                           f"expected {expected}; log {log_path}:\n{tail}")


# --------------------------------------------------------------------------- figures from a run


def events_named(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["event"] == name]


def single(events: list[dict], name: str) -> dict:
    found = events_named(events, name)
    if len(found) != 1:
        raise RuntimeError(f"expected one {name!r} event, found {len(found)}")
    return found[0]


def startup_figures(events: list[dict], started_at: float) -> dict:
    started = single(events, "started")
    return {
        "to_started_s": started["ts"] - started_at,
        "to_first_batch_s": events_named(events, "batch")[0]["ts"] - started_at,
        "import_s": started["import_seconds"],
        "setup_s": started["setup_seconds"],
    }


def batch_phase_throughput(events: list[dict], images_per_epoch: int, batch: int) -> dict:
    """Images of the batches after the first, over the time from the first batch event to the last."""
    batches = events_named(events, "batch")
    images = sum(min(batch, images_per_epoch - e["batch"] * batch) for e in batches[1:])
    seconds = batches[-1]["ts"] - batches[0]["ts"]
    return {"seconds": seconds, "images": images, "images_per_s": images / seconds if seconds > 0 else None}


def loop_throughput(results_csv: Path, images_per_epoch: int, epochs: int) -> dict | None:
    """Training time of the first E-1 epochs (no validation in them), from results.csv's 'time' column."""
    if epochs < 2:
        return None
    with open(results_csv, newline="") as f:
        rows = [{key.strip(): value for key, value in row.items()} for row in csv.DictReader(f)]
    seconds = float(rows[epochs - 2]["time"])
    images = images_per_epoch * (epochs - 1)
    return {"seconds": seconds, "images": images, "images_per_s": images / seconds}


# --------------------------------------------------------------------------- the three measurements


def measure_throughput(work: Path, data_yaml: Path, config_dir: Path, args: argparse.Namespace) -> list[dict]:
    runs = []
    for i, kind in enumerate(("worker", "bare", "bare", "worker")):
        print(f"  run {i + 1}/4: {kind} ...", file=sys.stderr, flush=True)
        if kind == "worker":
            runs.append(run_worker(work / "throughput" / f"worker{i}", data_yaml, config_dir, args))
        else:
            runs.append(run_bare_yolo(work / "throughput", f"bare{i}", data_yaml, config_dir, args))
    return runs


def measure_preemption(work: Path, data_yaml: Path, config_dir: Path, args: argparse.Namespace) -> list[dict]:
    runs = []
    for i in range(args.repeats):
        print(f"  preemption {i + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
        runs.append(preempt_once(work / "preempt" / f"run{i}", data_yaml, config_dir, args))
    return runs


def median_and_max(values: list[float]) -> dict:
    return {"median": statistics.median(values), "max": max(values)}


def throughput_summary(runs: list[dict]) -> dict:
    def median_of(kind: str, pick) -> float | None:
        values = [pick(r) for r in runs if r["kind"] == kind and pick(r) is not None]
        return statistics.median(values) if values else None

    wall = {kind: median_of(kind, lambda r: r["wall_s"]) for kind in ("worker", "bare")}
    loop = {kind: median_of(kind, lambda r: r["loop"] and r["loop"]["images_per_s"]) for kind in ("worker", "bare")}
    return {
        "wall_s_median": wall,
        "wall_ratio_worker_over_bare": wall["worker"] / wall["bare"],
        "loop_images_per_s_median": loop,
        "loop_speed_ratio_worker_over_bare": loop["worker"] / loop["bare"] if loop["worker"] and loop["bare"] else None,
        "batch_phase_images_per_s_median": median_of("worker", lambda r: r["batch_phase"]["images_per_s"]),
    }


# --------------------------------------------------------------------------- printing


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[format_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    print("  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in cells:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))


def format_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def print_header(machine: dict, args: argparse.Namespace) -> None:
    print("Cutline worker benchmark")
    print(f"  machine: {machine['cpus']} CPUs ({machine['processor']}), {machine['platform']}, "
          f"python {machine['python']}")
    print(f"  torch {machine['torch']} ({machine['torch_threads']} threads), ultralytics {machine['ultralytics']}")
    print(f"  load average at start (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  training: {MODEL} on {DEVICE}, {args.train} train / {args.val} val images of {args.imgsz} px, "
          f"epochs={args.epochs} batch={args.batch} workers=0 seed=0 deterministic amp=False val=False plots=False")


def print_startup(samples: list[tuple[str, dict]]) -> None:
    print("\n1. Worker startup (seconds from just before Popen)")
    rows = [[label, s["to_started_s"], s["to_first_batch_s"], s["import_s"], s["setup_s"]] for label, s in samples]
    print_table(["run", "->started", "->1st batch done", "import_s", "setup_s"], rows)
    keys = ("to_started_s", "to_first_batch_s", "import_s", "setup_s")
    stats = {k: median_and_max([s[k] for _, s in samples]) for k in keys}
    print_table(["", "->started", "->1st batch done", "import_s", "setup_s"],
                [[stat, *(stats[k][stat] for k in keys)] for stat in ("median", "max")])


def print_preemption(runs: list[dict], summary: dict) -> None:
    print(f"\n2. Preemption (SIGTERM after {PREEMPT_AFTER_BATCHES} batch events seen; seconds)")
    rows = [[i + 1, r["load1"], r["checkpoint_at"], r["to_checkpoint_s"], r["to_preempted_event_s"], r["to_exit_s"],
             r["checkpoint_write_s"], r["checkpoint_event_mb"], r["checkpoint_file_mb"], r["median_batch_s"]]
            for i, r in enumerate(runs)]
    print_table(["run", "load1", "checkpoint at", "->ckpt", "->preempted", "->exit", "write_s", "event_MB", "file_MB",
                 "batch_s"], rows)
    keys = ("to_checkpoint_s", "to_preempted_event_s", "to_exit_s", "checkpoint_write_s", "checkpoint_file_mb")
    print_table(["", "->ckpt", "->preempted", "->exit", "write_s", "file_MB"],
                [[stat, *(summary[k][stat] for k in keys)] for stat in ("median", "max")])
    print("  ->ckpt includes finishing the batch in progress (batch_s: median seconds between batch events)")


def print_throughput(runs: list[dict], summary: dict, args: argparse.Namespace) -> None:
    images = args.train * args.epochs
    print(f"\n3. Throughput, worker vs bare `yolo train` ({images} training images per run, in run order)")
    rows = []
    for i, r in enumerate(runs):
        loop, phase = r["loop"] or {}, r.get("batch_phase") or {}
        rows.append([i + 1, r["kind"], r["load1"], r["wall_s"], images / r["wall_s"], loop.get("seconds"),
                     loop.get("images_per_s"), phase.get("seconds"), phase.get("images_per_s")])
    print_table(["run", "kind", "load1", "wall_s", "wall_img/s", f"loop_s(E1-{args.epochs - 1})", "loop_img/s",
                 "batch_phase_s", "batch_img/s"], rows)
    wall, loop = summary["wall_s_median"], summary["loop_images_per_s_median"]
    print(f"  wall time, median: worker {wall['worker']:.2f} s, bare {wall['bare']:.2f} s; "
          f"ratio worker/bare = {summary['wall_ratio_worker_over_bare']:.3f}")
    if summary["loop_speed_ratio_worker_over_bare"] is not None:
        print(f"  loop speed, median: worker {loop['worker']:.1f} img/s, bare {loop['bare']:.1f} img/s; "
              f"ratio worker/bare = {summary['loop_speed_ratio_worker_over_bare']:.3f}")
    print(f"  worker batch phase (first to last batch event), median: "
          f"{summary['batch_phase_images_per_s_median']:.1f} img/s")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    print_header(machine, args)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cutline-bench-") as tmp:
        work = Path(tmp)
        data_yaml = generate_dataset(work / "data", train=args.train, val=args.val, imgsz=args.imgsz, seed=0)
        config_dir = work / "ultralytics-config"
        prepare_config_dir(config_dir)
        throughput_runs = measure_throughput(work, data_yaml, config_dir, args)
        preemption_runs = measure_preemption(work, data_yaml, config_dir, args)
    load_after = os.getloadavg()

    startup_samples = [(f"throughput {i + 1}", r["startup"])
                       for i, r in enumerate(throughput_runs) if r["kind"] == "worker"]
    startup_samples += [(f"preempt {i + 1}", r["startup"]) for i, r in enumerate(preemption_runs)]
    preemption_summary = {k: median_and_max([r[k] for r in preemption_runs])
                          for k in ("to_checkpoint_s", "to_preempted_event_s", "to_exit_s", "checkpoint_write_s",
                                    "checkpoint_event_mb", "checkpoint_file_mb")}
    summary = throughput_summary(throughput_runs)

    print_startup(startup_samples)
    print_preemption(preemption_runs, preemption_summary)
    print_throughput(throughput_runs, summary, args)
    print(f"\n  load average (1/5/15 min): start {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"end {' '.join(f'{x:.2f}' for x in load_after)}")

    if args.json:
        report = {
            "machine": machine,
            "settings": {**vars(args), "json": str(args.json), "model": MODEL, "device": DEVICE,
                         "preempt_after_batches": PREEMPT_AFTER_BATCHES},
            "load_average": {"start": list(load_before), "end": list(load_after)},
            "startup": [{"run": label, **s} for label, s in startup_samples],
            "preemption": {"runs": preemption_runs, "summary": preemption_summary},
            "throughput": {"runs": throughput_runs, "summary": summary},
        }
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"  JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
