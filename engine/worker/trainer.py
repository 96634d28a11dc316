"""A preemptible Ultralytics trainer: checkpoints at any batch boundary and resumes at the next batch.

Ultralytics is extended, never patched: `preemptible(trainer_class)` subclasses the task's own
trainer (DetectionTrainer, SegmentationTrainer, ...) and owns the batch loop (`_do_train`), because
an exact mid-epoch resume needs loop state the stock loop keeps in local variables (the batch index,
the last optimizer step) and needs to skip already-consumed batches without decoding their images.

Everything that shapes the next batch is saved (each item was shown necessary for bit-identical
weights; see docs/worker.md): raw model and EMA weights, the full fp32 optimizer state, gradients
accumulated but not yet applied, Python/NumPy/torch RNG states, the train loader's shuffle-generator
state at the start of the epoch, the mosaic buffer, warmup/accumulation counters, running losses,
best fitness and the early stopper. The loop mirrors the stock one step for step, so an
uninterrupted run trains exactly as `yolo train` would (single device; no DDP, no OOM auto-shrink,
no `time=` budget).
"""
from __future__ import annotations

import io
import os
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import ModelEMA, autocast, unwrap_model

from .checkpoint import write_atomically
from .signals import StopSignals

RESUME_FORMAT = 1


class Preempted(Exception):
    """Raised inside the training loop once the preemption checkpoint is on disk."""


class StoppedBeforeTraining(Exception):
    """Raised when a stop (or the engine going away) ends the wait at the gate: nothing trained,
    so the previous checkpoint, if any, is still the one to resume from."""


def parse_fault_points(text: str) -> set[tuple]:
    """Fault injection for tests and drills: points where the worker sends itself a real SIGTERM.

    "batch:E:B" - at the boundary after B batches of epoch E (0-based); "val:E" - as validation of
    epoch E starts; "final" - as the final evaluation starts.
    """
    points: set[tuple] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, *numbers = item.split(":")
        if kind not in ("batch", "val", "final") or len(numbers) != {"batch": 2, "val": 1, "final": 0}[kind]:
            raise ValueError(f"bad fault point {item!r}: expected batch:E:B, val:E or final")
        points.add((kind, *map(int, numbers)))
    return points


def preemptible(base: type) -> type:
    """Return a subclass of an Ultralytics trainer class that supports exact preemption and resume."""

    class PreemptibleTrainer(_PreemptibleMixin, base):
        pass

    PreemptibleTrainer.__name__ = f"Preemptible{base.__name__}"
    PreemptibleTrainer.__qualname__ = PreemptibleTrainer.__name__
    return PreemptibleTrainer


class _PreemptibleMixin:
    # Set by the worker before train(): where to save, what to resume from, who to tell.
    resume_path: Path
    resume_state: dict | None = None
    signals: StopSignals
    emit: Callable[..., None]
    fault_points: set = frozenset()
    batch_delay: float = 0.0  # seconds slept at each batch boundary (tests and drills only)
    # Called once setup is done, before the first batch. A gated worker prepares (dataset scan,
    # model build) while the job it replaces still saves, and waits here for the device. Returns
    # False to stop before training.
    gate: Callable[[], bool] = staticmethod(lambda: True)

    # ------------------------------------------------------------------ the loop

    def _do_train(self):
        if self.world_size > 1:
            raise RuntimeError("Cutline trains on exactly one device per job; multi-GPU (DDP) is not supported")
        if getattr(self.args, "time", None):
            raise RuntimeError("time-limited training (time=...) is not supported by Cutline; set epochs")
        self._setup_train()
        if not self.gate():
            raise StoppedBeforeTraining("stopped at the gate, before the first batch")
        self.add_callback("on_val_start", self._fault_point_at_validation)
        self.add_callback("on_val_batch_start", self._abandon_validation_if_preempted)

        nb = len(self.train_loader)
        self._nb = nb
        self._nw = self._get_warmup_iterations(nb)
        self._acc0 = self.accumulate
        self._last_opt_step = -1
        self._epoch_generator_state = None
        self._epoch_iterator_fresh = True
        self._train_end_snapshot = None  # (rng, criterion updates) when the last epoch's batches ended
        self._training_complete = False
        self.epoch_time = None
        self.epoch_time_start = time.time()
        self.train_time_start = time.time()

        start_epoch, start_batch = self.start_epoch, 0
        state = self.resume_state
        if state is not None:
            start_epoch, start_batch = self._restore_outer_state(state)
        self.run_callbacks("on_train_start")
        self.emit(
            "training",
            epochs=self.epochs,
            batches_per_epoch=nb,
            images=len(self.train_loader.dataset),
            start_epoch=start_epoch,
            start_batch=start_batch,
        )
        mosaic_closed = not self.args.close_mosaic
        if not mosaic_closed and start_epoch > self.epochs - self.args.close_mosaic:
            mosaic_closed = True  # resumed past the epoch that closed it: close it before any batch loads
            self._close_dataloader_mosaic()
        if state is None or start_batch == 0:
            self.optimizer.zero_grad()  # stock behaviour at train start; a mid-epoch resume restores pending grads

        epoch = start_epoch
        if self._training_complete:
            epoch = self.epochs  # preempted after training, before or during the final evaluation
        while epoch < self.epochs:
            self.epoch = epoch
            self.run_callbacks("on_train_epoch_start")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 'lr_scheduler.step() before optimizer.step()'
                self.scheduler.step()
            self._model_train()
            if not mosaic_closed and epoch >= self.epochs - self.args.close_mosaic:
                mosaic_closed = True
                self._close_dataloader_mosaic()
                self.train_loader.reset()
            loader = self.train_loader
            fresh_iterator = loader.iterator is None
            if fresh_iterator:
                loader.iterator = loader._get_iterator()  # as the stock first next() would, so capture is exact
            first_batch = 0
            if state is not None and epoch == start_epoch:
                first_batch = self._restore_epoch_state(state, loader)
                state = self.resume_state = None
            else:
                self._epoch_generator_state = loader.generator.get_state() if loader.generator is not None else None
                self._epoch_iterator_fresh = fresh_iterator
                self.tloss = None
                self._boundary(epoch, 0)

            for i in range(first_batch, nb):
                batch = next(loader.iterator)
                self._train_one_batch(epoch, i, batch)
                self.run_callbacks("on_train_batch_end")
                if self.stop:
                    break
                self._boundary(epoch, i + 1)

            criterion = getattr(unwrap_model(self.model), "criterion", None)  # built lazily by the first loss
            self._train_end_snapshot = (_capture_rng(), getattr(criterion, "updates", None))
            if hasattr(criterion, "update"):
                unwrap_model(self.model).criterion.update()
            self.lr = {f"lr/pg{ir}": x["lr"] for ir, x in enumerate(self.optimizer.param_groups)}
            self.run_callbacks("on_train_epoch_end")
            self.ema.update_attr(self.model, include=["yaml", "nc", "args", "names", "stride", "class_weights"])

            final_epoch = epoch + 1 >= self.epochs
            if self.args.val or final_epoch or self.stopper.possible_stop or self.stop:
                self._clear_memory(0.5)
                self.metrics, self.fitness = self.validate()

            if self._handle_nan_recovery(epoch):
                self._last_opt_step = -1
                self.optimizer.zero_grad()
                continue
            self.nan_recovery_attempts = 0
            self.save_metrics(metrics={**self.label_loss_items(self.tloss), **self.metrics, **self.lr})
            self.stop |= self.stopper(epoch + 1, self.fitness) or final_epoch
            if (self.args.save or final_epoch) and self.save_model():
                self.run_callbacks("on_model_save")
            t = time.time()
            self.epoch_time = t - self.epoch_time_start
            self.epoch_time_start = t
            self.run_callbacks("on_fit_epoch_end")
            self._clear_memory(0.5)
            if self.stop:
                break
            epoch += 1

        self._training_complete = True
        self._boundary(self.epoch, self._nb)
        self.final_eval()
        if self.args.plots:
            self.plot_metrics()
        self.run_callbacks("on_train_end")
        self._clear_memory()
        for loader in (self.train_loader, self.test_loader):
            if hasattr(loader, "close"):
                loader.close()

    def _train_one_batch(self, epoch: int, i: int, batch: dict) -> None:
        """One step of the stock loop: warmup, forward, backward, optimizer step every `accumulate` batches."""
        self.run_callbacks("on_train_batch_start")
        nb, nw = self._nb, self._nw
        ni = i + nb * epoch
        if nw and ni <= nw:
            xi = [0, nw]
            self.accumulate = max(1, int(np.interp(ni, xi, [1, self._acc0]).round()))
            for x in self.optimizer.param_groups:
                x["lr"] = float(
                    np.interp(
                        ni,
                        xi,
                        [
                            self.args.warmup_bias_lr if x.get("param_group") == "bias" else 0.0,
                            x["initial_lr"] * self.lf(epoch),
                        ],
                    )
                )
                if "momentum" in x:
                    x["momentum"] = float(np.interp(ni, xi, [self.args.warmup_momentum, self.args.momentum]))
        with autocast(torch.bfloat16 if self.args.amp == "bf16" else self.amp, device=self.device.type):
            batch = self.preprocess_batch(batch)
            if self.args.compile:
                preds = self.model(batch["img"])
                loss, self.loss_items = unwrap_model(self.model).loss(batch, preds)
            else:
                loss, self.loss_items = self.model(batch)
            self.loss = loss.sum()
            if not self.loss_names:
                self.loss_names = tuple(self.loss_items)
                self.metrics.update(dict.fromkeys(self.label_loss_items(prefix="val"), 0.0))
            self.tloss = (
                self.loss_items
                if self.tloss is None
                else {k: (self.tloss[k] * i + v) / (i + 1) for k, v in self.loss_items.items()}
            )
        self.scaler.scale(self.loss).backward()
        if ni - self._last_opt_step >= self.accumulate:
            self.optimizer_step()
            self._last_opt_step = ni
        self.emit(
            "batch",
            epoch=epoch,
            batch=i,
            batches=nb,
            losses={k: float(v) for k, v in self.loss_items.items()},
            lr=float(self.optimizer.param_groups[0]["lr"]),
            instances=int(batch["cls"].shape[0]) if "cls" in batch else None,
        )

    # ------------------------------------------------------------------ preemption points

    def _boundary(self, epoch: int, batches_done: int) -> None:
        """A safe point: nothing is half-applied. Act on signals that arrived since the last one."""
        self._fault_point(("batch", epoch, batches_done))
        if self.batch_delay:
            time.sleep(self.batch_delay)  # drills: a slower job, same numbers
        if self.signals.preempt:
            self.save_resume_checkpoint(epoch, batches_done, reason="preempt")
            raise Preempted(f"epoch {epoch + 1}, batch {batches_done}/{self._nb}")
        if self.signals.checkpoint:
            self.signals.checkpoint = False
            self.save_resume_checkpoint(epoch, batches_done, reason="safety")

    def _fault_point(self, point: tuple) -> None:
        if point in self.fault_points:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal through the real handler

    def _fault_point_at_validation(self, validator) -> None:
        self._fault_point(("final",) if self._training_complete else ("val", self.epoch))

    def _abandon_validation_if_preempted(self, validator) -> None:
        if not self.signals.preempt:
            return
        # Validation changes no weights and its RNG use is replayed on resume: save the state as it
        # was when the epoch's last batch ended, so the resumed run validates this epoch afresh.
        self.save_resume_checkpoint(self.epoch, self._nb, reason="preempt", at_train_end=True)
        raise Preempted(f"during validation of epoch {self.epoch + 1}")

    # ------------------------------------------------------------------ save

    def save_model(self):
        """Ultralytics' own epoch-end save, but last.pt and best.pt appear whole or not at all: the stock
        save rewrites them in place, and another job (an emergency retrain from this one's best.pt)
        may read them at any moment, or a kill -9 may land mid-write."""
        final_last, final_best = self.last, self.best
        staged = {final_last: final_last.with_name(final_last.name + ".saving"),
                  final_best: final_best.with_name(final_best.name + ".saving")}
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)  # a previous crash's half file must not be taken for this epoch's
        self.last, self.best = staged[final_last], staged[final_best]
        try:
            saved = super().save_model()
        finally:
            self.last, self.best = final_last, final_best
        for final, tmp in staged.items():
            if tmp.exists():
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, final)
        return saved

    def save_resume_checkpoint(self, epoch: int, batches_done: int, reason: str, at_train_end: bool = False):
        """`at_train_end`: record the state as it was when the epoch's last batch ended (used when
        validation is abandoned, since it consumed RNG and ran the epoch-end criterion update)."""
        started = time.perf_counter()
        state = self._resume_state(epoch, batches_done, at_train_end)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        write_atomically(self.resume_path, data)
        seconds = time.perf_counter() - started
        self.emit(
            "checkpoint",
            path=str(self.resume_path),
            reason=reason,
            epoch=epoch,
            batch=batches_done,
            batches=self._nb,
            training_complete=self._training_complete,
            seconds=round(seconds, 4),
            bytes=len(data),
        )
        return seconds, len(data)

    def _resume_state(self, epoch: int, batches_done: int, at_train_end: bool) -> dict:
        model = unwrap_model(self.model)
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        dataset = self.train_loader.dataset
        criterion = getattr(model, "criterion", None)
        if at_train_end and self._train_end_snapshot is not None:
            rng, criterion_updates = self._train_end_snapshot
        else:
            rng, criterion_updates = _capture_rng(), getattr(criterion, "updates", None)
        return {
            "cutline_resume": RESUME_FORMAT,
            "epoch": epoch,
            "batches_done": batches_done,
            "batches_per_epoch": self._nb,
            "training_complete": self._training_complete,
            "model": model.state_dict(),
            "ema": self.ema.ema.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "grads": grads,
            "rng": rng,
            "epoch_generator_state": self._epoch_generator_state,
            "epoch_iterator_fresh": self._epoch_iterator_fresh,
            "mosaic_buffer": list(getattr(dataset, "buffer", [])),
            "accumulate": self.accumulate,
            "last_opt_step": self._last_opt_step,
            "tloss": self.tloss,
            "loss": self.loss,
            "loss_items": getattr(self, "loss_items", None),
            "loss_names": self.loss_names,
            "best_fitness": self.best_fitness,
            "fitness": self.fitness,
            "metrics": self.metrics,
            "stopper": dict(self.stopper.__dict__),
            "criterion_updates": criterion_updates,
            "nan_recovery_attempts": self.nan_recovery_attempts,
            "results_csv": self.csv.read_text(encoding="utf-8") if self.csv.exists() else None,
            "train_seconds": time.time() - self.train_time_start,
        }

    def save_final_state(self, path: Path) -> int:
        """The complete state after training (raw model, EMA, optimizer), for audits and continued training."""
        buffer = io.BytesIO()
        torch.save(self._resume_state(self.epoch, self._nb, at_train_end=False), buffer)
        write_atomically(path, buffer.getvalue())
        return buffer.tell()

    # ------------------------------------------------------------------ restore

    def _restore_outer_state(self, state: dict) -> tuple[int, int]:
        """Everything that is set once, before the epoch loop."""
        if state.get("cutline_resume") != RESUME_FORMAT:
            raise RuntimeError(f"{self.resume_path} is not a Cutline resume checkpoint of format {RESUME_FORMAT}")
        if state["batches_per_epoch"] != self._nb:
            raise RuntimeError(
                f"the dataset changed since the checkpoint: {self._nb} batches per epoch now, "
                f"{state['batches_per_epoch']} when it was saved"
            )
        model = unwrap_model(self.model)
        model.load_state_dict(state["model"])
        self.ema = ModelEMA(self.model)  # fresh, as stock resume does: a validated EMA holds inference tensors
        self.ema.ema.load_state_dict(state["ema"])
        self.ema.updates = state["ema_updates"]
        self.scaler.load_state_dict(state["scaler"])
        self.best_fitness = state["best_fitness"]
        self.fitness = state["fitness"]
        self.metrics = state["metrics"]
        self.loss_names = state["loss_names"]
        self.loss = state["loss"]
        if state["loss_items"] is not None:
            self.loss_items = state["loss_items"]
        self.stopper.__dict__.update(state["stopper"])
        self.nan_recovery_attempts = state["nan_recovery_attempts"]
        self._last_opt_step = state["last_opt_step"]
        self._training_complete = state["training_complete"]
        if state["results_csv"] is not None:
            self.csv.write_text(state["results_csv"], encoding="utf-8")  # drop rows of a lost future
        elif self.csv.exists():
            self.csv.unlink()
        self.train_time_start -= state["train_seconds"]  # results.csv 'time' keeps counting training time
        self.start_epoch = state["epoch"]
        self.scheduler.last_epoch = state["epoch"] - 1  # the loop's scheduler.step() re-enters this epoch
        if self._training_complete:
            self.epoch = state["epoch"]
            self.optimizer.load_state_dict(state["optimizer"])
            _restore_rng(state["rng"])
        return state["epoch"], state["batches_done"]

    def _restore_epoch_state(self, state: dict, loader) -> int:
        """Re-enter the interrupted epoch at its next batch; returns the first batch index to train."""
        batches_done = state["batches_done"]
        # After scheduler.step(): the saved optimizer carries the exact lr/momentum of the interrupted step.
        self.optimizer.load_state_dict(state["optimizer"])
        self.accumulate = state["accumulate"]
        self.tloss = state["tloss"]
        self._epoch_generator_state = state["epoch_generator_state"]
        self._epoch_iterator_fresh = state["epoch_iterator_fresh"]
        if loader.generator is not None and self._epoch_generator_state is not None:
            loader.generator.set_state(self._epoch_generator_state)
            if not self._epoch_iterator_fresh:
                _replay_end_of_previous_pass(loader)
        if loader.num_workers == 0:
            # Same permutation as the interrupted epoch; skip consumed batches by index, decoding no image.
            for _ in range(batches_done):
                loader.iterator._next_index()
        # With dataloader workers the next batches come from the stream as they are: no batch of
        # progress is lost, but the interrupted epoch's remaining order is not replayed exactly.
        dataset = loader.dataset
        if hasattr(dataset, "buffer") and dataset.ims is not None:
            for j in list(dataset.buffer):
                dataset.ims[j] = None
            dataset.buffer.clear()
            for j in state["mosaic_buffer"]:
                dataset.load_image(j)  # re-reads the image and appends it, as when first loaded
        model = unwrap_model(self.model)
        for name, param in model.named_parameters():
            param.grad = state["grads"].get(name)
        if state["criterion_updates"] is not None:
            # Losses with an epoch schedule (e.g. YOLO26's one-to-many decay): rebuild at the saved step.
            model.criterion = model.init_criterion()
            model.criterion.updates = state["criterion_updates"] - 1
            model.criterion.update()
        _restore_rng(state["rng"])
        LOGGER.info(f"Cutline: resumed at epoch {state['epoch'] + 1}, batch {batches_done + 1}/{self._nb}")
        return batches_done


def _replay_end_of_previous_pass(loader) -> None:
    """torch's RandomSampler draws one extra permutation (for the `num_samples % n` remainder) when a
    pass ends, and with Ultralytics' endless loader that happens inside the next epoch's first batch.
    A resumed process starts a new pass instead, so make the same draw before taking the epoch's order."""
    sampler = loader.sampler
    if isinstance(sampler, torch.utils.data.RandomSampler) and not sampler.replacement:
        torch.randperm(len(sampler.data_source), generator=loader.generator)


def _capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
