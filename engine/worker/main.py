"""Worker process entry: validate the spec, train with Ultralytics, report through the event stream.

Order matters here: signal handlers first (a preemption may arrive while torch is still importing),
then the cheap spec checks (bad input fails in milliseconds, before any heavy import), then the
offline environment, and only then torch and Ultralytics.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from engine import protocol, runlock
from engine.events import EventWriter
from engine.spec import JobSpec, SpecError, check_device, check_spec

from . import signals as worker_signals
from .control import ControlChannel
from .signals import StopSignals

FORBID_NETWORK_ENV = "CUTLINE_FORBID_NETWORK"  # tests: any socket use fails the run loudly
FAULT_SIGTERM_ENV = "CUTLINE_FAULT_SIGTERM_AT"  # tests and drills: see trainer.parse_fault_points
# Imported lazily by a training run, measured: deterministic=True calls
# torch.use_deterministic_algorithms, which imports torch._inductor (and dynamo, sympy): ~2 s on
# these CPUs. A standby pays for them before it is needed.
STANDBY_PRELOADS = ("torch._inductor", "torch._dynamo", "torchvision.models", "torchvision.datasets",
                    "torch.distributed", "ultralytics.data.build", "ultralytics.nn.tasks")
FAULT_BATCH_DELAY_ENV = "CUTLINE_FAULT_BATCH_DELAY_S"  # tests and drills: sleep at every batch boundary
THREADS_ENV = "CUTLINE_TORCH_THREADS"  # torch threads for this worker (set per CPU slot by the engine)


def main(argv: list[str] | None = None, signals: StopSignals | None = None) -> int:
    started = time.perf_counter()
    signals = signals or worker_signals.install()
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description="Run one Cutline training job.")
    parser.add_argument("spec", nargs="?", help="path of the job's spec.json (not with --standby)")
    parser.add_argument("--gated", action="store_true",
                        help="prepare, then wait for {\"go\": true} on stdin before the first batch")
    parser.add_argument("--standby", action="store_true",
                        help="import torch and Ultralytics, then wait for the job on stdin (implies --gated "
                             "if the message says so)")
    parser.add_argument("--ready-file", help="standby: touched once the imports are done")
    parser.add_argument("--config-dir", help="standby: Ultralytics config dir to use for the imports")
    args = parser.parse_args(argv)
    if args.standby == bool(args.spec):
        parser.error("give a spec path, or --standby (not both)")

    channel = ControlChannel(signals) if (args.gated or args.standby) else None
    spec_path, gated = args.spec, args.gated
    if args.standby:
        message = _wait_as_standby(args, signals, channel)
        if message is None:
            return protocol.EXIT_PREEMPTED  # stopped or dismissed before it was given a job
        spec_path, gated = message["spec"], bool(message.get("gated"))
        started = time.perf_counter()  # the job's own start: the imports were paid for earlier

    try:
        spec = JobSpec.load(spec_path)
    except SpecError as e:
        print(f"cutline worker: {e}", file=sys.stderr)
        return protocol.EXIT_BAD_INPUT
    run_dir = Path(spec.run_dir)
    if args.standby:
        _redirect_output(run_dir / protocol.LOG_FILE)
    try:
        lock_fd = runlock.acquire(run_dir)  # held until this process ends, however it ends
    except runlock.RunBusy as e:
        print(f"cutline worker: {e}; not starting a second one", file=sys.stderr)
        return protocol.EXIT_RUN_BUSY
    events = EventWriter(run_dir / protocol.EVENTS_FILE)
    try:
        return _run(spec, run_dir, events, signals, started, channel.wait_for_go if gated else None)
    finally:
        events.close()
        os.close(lock_fd)


def _wait_as_standby(args, signals: StopSignals, channel: ControlChannel) -> dict | None:
    """Pay for the slow imports now, then wait for a job. Returns the job message, or None."""
    if args.config_dir:
        _prepare_offline_environment(Path(args.config_dir))
    import torch

    from . import trainer  # noqa: F401  (ultralytics and the trainer classes)
    from ultralytics.models import yolo  # noqa: F401

    for name in STANDBY_PRELOADS:
        try:
            importlib.import_module(name)
        except Exception:  # an optional part missing here only costs its time later
            pass
    if torch.cuda.is_initialized():
        # CUDA_VISIBLE_DEVICES is read once, when CUDA initialises: a standby that initialised it
        # could not be pointed at the device its job gets. The engine falls back to cold starts.
        print("cutline worker: CUDA initialised during imports; unusable as a standby", file=sys.stderr)
        return None
    if args.ready_file:
        Path(args.ready_file).touch()
    message = channel.receive()
    if message is None or "spec" not in message:
        return None
    os.environ.update({str(k): str(v) for k, v in (message.get("env") or {}).items()})
    return message


def _redirect_output(log_path: Path) -> None:
    """A standby was started before its job was known: from now on it logs into the job's run."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _run(spec: JobSpec, run_dir: Path, events: EventWriter, signals: StopSignals, started: float,
         gate=None) -> int:
    problems = check_spec(spec) + check_device(spec.device)
    if problems:
        events.emit(
            "failed",
            kind="bad_input",
            error="; ".join(str(p) for p in problems),
            problems=[{"field": p.field, "message": p.message} for p in problems],
        )
        return protocol.EXIT_BAD_INPUT
    if os.environ.get(FORBID_NETWORK_ENV):
        sys.addaudithook(_refuse_network)
    config_dir = Path(spec.config_dir or run_dir.parent / ".ultralytics")
    _prepare_offline_environment(config_dir)
    resume_path = run_dir / protocol.RESUME_CHECKPOINT
    if signals.preempt:
        # Asked to step aside before training began: the previous checkpoint (if any) is still current.
        events.emit("preempted", epoch=None, batch=None, checkpoint=str(resume_path) if resume_path.exists() else None,
                    note="stopped before training started")
        return protocol.EXIT_PREEMPTED

    try:
        import torch  # noqa: F401  (timed separately: most of a cold start is this import)

        from . import trainer as trainer_module

        imported = time.perf_counter()
        threads = os.environ.get(THREADS_ENV)
        if threads:  # several CPU slots share the cores: each worker gets its share
            torch.set_num_threads(max(1, int(threads)))
        problems = check_device(spec.device, torch.cuda.device_count())
        if problems:
            events.emit("failed", kind="bad_input", error=str(problems[0]),
                        problems=[{"field": p.field, "message": p.message} for p in problems])
            return protocol.EXIT_BAD_INPUT
        trainer = _build_trainer(spec, run_dir, resume_path, signals, events)
        if gate is not None:
            trainer.gate = gate
        events.emit(
            "started",
            pid=os.getpid(),
            device=spec.device,
            model=spec.model,
            data=spec.data,
            resumed=trainer.resume_state is not None,
            resume_epoch=None if trainer.resume_state is None else trainer.resume_state["epoch"],
            resume_batch=None if trainer.resume_state is None else trainer.resume_state["batches_done"],
            import_seconds=round(imported - started, 3),
            setup_seconds=round(time.perf_counter() - started, 3),
        )
        trainer.train()
    except trainer_module.Preempted as e:
        events.emit("preempted", checkpoint=str(resume_path), where=str(e))
        return protocol.EXIT_PREEMPTED
    except trainer_module.StoppedBeforeTraining as e:
        events.emit("preempted", epoch=None, batch=None, note=str(e),
                    checkpoint=str(resume_path) if resume_path.exists() else None)
        return protocol.EXIT_PREEMPTED
    except Exception as e:  # a readable error for the operator, the traceback for the engineer
        events.emit(
            "failed",
            kind="error",
            error=f"{type(e).__name__}: {e}".strip(),
            traceback="".join(traceback.format_exception(e))[-4000:],
        )
        return protocol.EXIT_FAILED

    if spec.keep_final_state:
        trainer.save_final_state(run_dir / protocol.FINAL_STATE)
    resume_path.unlink(missing_ok=True)  # finished: nothing left to resume
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    events.emit(
        "finished",
        best=str(trainer.best) if trainer.best.exists() else None,
        last=str(trainer.last) if trainer.last.exists() else None,
        epochs=trainer.epoch + 1,
        metrics=metrics,
    )
    return protocol.EXIT_FINISHED


def _prepare_offline_environment(config_dir: Path) -> None:
    """Ultralytics reads these at import; set them before it is imported."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(protocol.worker_environment({}, str(config_dir)))
    # Ultralytics' dataset check looks for Arial.ttf and would try to download it (hangs offline):
    # give it matplotlib's DejaVu Sans under the names it looks for.
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if not target.exists() and font.exists():
            shutil.copyfile(font, target)


def _refuse_network(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.getaddrinfo", "socket.sendto"):
        raise RuntimeError(f"network access attempted ({event} {args[1:] if len(args) > 1 else ''}); Cutline runs offline")


def _build_trainer(spec: JobSpec, run_dir: Path, resume_path: Path, signals: StopSignals, events: EventWriter):
    import torch

    from .trainer import parse_fault_points, preemptible

    os.chdir(Path(spec.data).resolve().parent)  # a relative 'path:' in data.yaml means the same as at submission
    trainer_class = preemptible(_task_trainer(spec.model))
    overrides = {
        **spec.train_args,
        "model": spec.model,
        "data": str(Path(spec.data).resolve()),
        "device": spec.device,
        "project": str(run_dir.parent.resolve()),
        "name": run_dir.name,
        "exist_ok": True,
        "resume": False,
    }
    trainer = trainer_class(overrides=overrides)
    trainer.signals = signals
    trainer.emit = events.emit
    trainer.resume_path = resume_path
    trainer.resume_state = torch.load(resume_path, map_location="cpu", weights_only=False) if resume_path.exists() else None
    trainer.fault_points = parse_fault_points(os.environ.get(FAULT_SIGTERM_ENV, ""))
    trainer.batch_delay = float(os.environ.get(FAULT_BATCH_DELAY_ENV) or 0)
    trainer.add_callback("on_fit_epoch_end", _epoch_reporter(events))
    return trainer


def _task_trainer(model: str) -> type:
    from ultralytics.models import yolo
    from ultralytics.nn.tasks import guess_model_task, load_checkpoint, yaml_model_load

    if model.lower().endswith(".pt"):
        task = load_checkpoint(model)[0].task
    else:
        task = guess_model_task(yaml_model_load(model))
    trainers = {
        "detect": yolo.detect.DetectionTrainer,
        "segment": yolo.segment.SegmentationTrainer,
        "classify": yolo.classify.ClassificationTrainer,
        "pose": yolo.pose.PoseTrainer,
        "obb": yolo.obb.OBBTrainer,
    }
    if task not in trainers:
        raise ValueError(f"task {task!r} of model {model} is not supported (supported: {', '.join(trainers)})")
    return trainers[task]


METRIC_NAMES = {
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
    "mAP50": "metrics/mAP50(B)",
    "mAP50-95": "metrics/mAP50-95(B)",
}


def _epoch_reporter(events: EventWriter):
    def report(trainer) -> None:
        metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
        summary = {short: metrics.get(long) for short, long in METRIC_NAMES.items()}
        if getattr(trainer, "_training_complete", False):
            events.emit("final_metrics", **summary, metrics=metrics)  # final_eval's re-validation of best.pt
        else:
            events.emit("epoch", epoch=trainer.epoch, epochs=trainer.epochs, fitness=_float(trainer.fitness),
                        seconds=_float(trainer.epoch_time), **summary, metrics=metrics)

    return report


def _float(value) -> float | None:
    return None if value is None else float(value)


if __name__ == "__main__":
    raise SystemExit(main())
