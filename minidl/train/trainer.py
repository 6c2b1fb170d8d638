"""A reusable training loop: steps, periodic evaluation, metrics as JSON lines, a
progress bar, atomic checkpoints, resume, and a clean stop on Ctrl-C."""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from .. import functions as F
from .._atomic import atomic_write
from ..autograd import no_grad
from ..random import get_rng_state, set_rng_state
from ..serialization import load, save
from .bn_stats import population_statistics

BN_EVAL_MODES = ("running", "population")


def accuracy_and_loss(model, loader, loss_fn=F.cross_entropy,
                      device: str = "cpu") -> tuple[float, float]:
    """Classification accuracy and mean loss of `model` over `loader`, in eval mode
    (batches are moved to `device`; the predictions come back to the host)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    with no_grad():
        for x, y in loader:
            logits = model(x.to(device))
            loss_sum += float(loss_fn(logits, y.to(device), reduction="sum").data)
            correct += int((logits.numpy().argmax(axis=1) == y.numpy()).sum())
            total += len(y.data)
    model.train(was_training)
    if total == 0:
        raise ValueError("accuracy_and_loss: the evaluation loader yielded no examples")
    return correct / total, loss_sum / total


class DivergenceError(FloatingPointError):
    """The training loss became NaN or infinite. `step` is where it happened;
    `last_good` is (step, path) of the last checkpoint, which still holds the state
    from before the divergence, or None if none was written."""

    def __init__(self, name: str, loss: float, step: int, last_good=None):
        self.name, self.loss, self.step, self.last_good = name, loss, step, last_good
        where = ("no checkpoint was written before it" if last_good is None else
                 f"the last good checkpoint is {last_good[1]} (step {last_good[0]})")
        super().__init__(f"{name}: loss became {loss} at step {step}; {where}. Check the "
                         f"learning rate and the initialization")


class _Forever:
    """Batches from a DataLoader across epochs; its state is the loader's state. A
    sampler with `set_epoch` (DistributedSampler) is told each new epoch's number."""

    def __init__(self, loader):
        self.loader, self._it = loader, None

    def _start(self):
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            st = self.loader.state_dict()
            if not st["in_epoch"]:
                sampler.set_epoch(st["epoch"])
            elif st["position"] >= len(self.loader):  # saved right after an epoch's end
                sampler.set_epoch(st["epoch"] + 1)
        self._it = iter(self.loader)

    def next(self):
        if self._it is None:
            self._start()
        try:
            return next(self._it)
        except StopIteration:
            self._start()
            return next(self._it)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)
        self._it = None


class _StopRequest:
    """Turns the first Ctrl-C into a flag checked between steps (a checkpoint taken in
    the middle of an optimizer update would be inconsistent); a second one interrupts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class Trainer:
    """Trains `model` with `optimizer` on batches of `train_loader`.

    Every `eval_every` steps: test accuracy and loss on `eval_loader` (BN layers use
    their running statistics, or with bn_eval="population" the paper's Algorithm 2
    statistics over `bn_stats_batches` batches of `bn_stats_loader`), recorder
    percentiles, one JSON line appended to `out_dir/metrics.jsonl`. Every
    `checkpoint_every` steps (and at the end, and on Ctrl-C) an atomic checkpoint
    `out_dir/checkpoint.npz`; `fit(..., resume=True)` continues from it exactly: the
    logged `train_loss` of a resumed run averages over the whole logging window, steps
    before the restart included, so its metrics equal an uninterrupted run's.

    `resume_overrides`, e.g. {"lr": 0.001}: optimizer options the user gave anew for a
    resumed run. A checkpoint restores the optimizer's options as saved; these are then
    set in every parameter group, and each one that differs from the checkpoint's is
    announced on stdout ("resuming with lr 0.001 (the checkpoint had 0.01)"). Options
    not listed keep the checkpoint's values (the usual case: resume changes nothing).

    In an initialized minidl.distributed group (model wrapped in DistributedDataParallel,
    loader with a DistributedSampler) every rank runs the same loop: the reported loss
    is the mean over the global batch, a stop request on any rank stops all at the same
    step, only rank 0 writes metrics and checkpoints and shows the progress bar, and
    resume loads rank 0's checkpoint and broadcasts it."""

    def __init__(self, model, optimizer, train_loader, *, eval_loader=None,
                 loss_fn=F.cross_entropy, eval_every: int = 1000,
                 checkpoint_every: int | None = 5000, out_dir=None, recorders=(),
                 bn_eval: str = "running", bn_stats_loader=None, bn_stats_batches: int = 50,
                 scheduler=None, progress: bool = True, progress_position: int | None = None,
                 name: str = "train", resume_overrides: dict | None = None,
                 device: str = "cpu"):
        if bn_eval not in BN_EVAL_MODES:
            raise ValueError(f"Trainer: bn_eval must be one of {BN_EVAL_MODES}, got {bn_eval!r}")
        if bn_eval == "population" and bn_stats_loader is None:
            raise ValueError("Trainer: bn_eval='population' needs bn_stats_loader (training "
                             "batches, with their own shuffling)")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device = device  # where the batches go; the model must already be there
        self.batches = _Forever(train_loader)
        self.eval_loader, self.loss_fn = eval_loader, loss_fn
        self.eval_every, self.checkpoint_every = eval_every, checkpoint_every
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.recorders = list(recorders)
        self.bn_eval, self.bn_stats_loader = bn_eval, bn_stats_loader
        self.bn_stats_batches = bn_stats_batches
        self.progress, self.name = progress, name
        self.progress_position = progress_position
        self.step = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self._last_checkpoint = None  # (step, path) of the last checkpoint written or loaded
        from ..distributed.group import current_group
        self._group = current_group()
        self.is_main = self._group.rank == 0
        self.resume_overrides = dict(resume_overrides or {})
        for key in self.resume_overrides:
            if key == "params" or any(key not in g for g in optimizer.param_groups):
                raise ValueError(f"Trainer: resume_overrides names {key!r}, which is not an "
                                 f"option of {type(optimizer).__name__}")
        # Training losses since the last logged row (the logging window); checkpointed,
        # so that a resumed run logs the same averages as an uninterrupted one.
        self._loss_sum, self._loss_count = 0.0, 0

    # ---- paths and persistence ----------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoint.npz"

    @property
    def metrics_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "metrics.jsonl"

    def _inner_model(self):
        """The model a checkpoint holds: DistributedDataParallel's wrapped module, so
        a checkpoint does not depend on how many processes wrote it."""
        from ..distributed.ddp import DistributedDataParallel
        m = self.model
        return m.module if isinstance(m, DistributedDataParallel) else m

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "world_size": self._group.size,
            "model": self._inner_model().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "loader": self.batches.state_dict(),
            "rng": get_rng_state(),
            "history": self.history,
            "recorders": [r.history for r in self.recorders],
            "train_seconds": self.train_seconds,
            "loss_window": [self._loss_sum, self._loss_count],
        }

    def load_state_dict(self, state: dict) -> None:
        saved = int(state.get("world_size", 1))
        if saved != self._group.size:
            raise ValueError(f"{self.name}: the checkpoint was written by a run of {saved} "
                             f"process(es) and this run has {self._group.size}; resume it "
                             f"with the same number of ranks (mpirun -n {saved})")
        self.step = int(state["step"])
        self._inner_model().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.history = [dict(row) for row in state["history"]]
        for rec, hist in zip(self.recorders, state["recorders"]):
            rec.history = [dict(row) for row in hist]
        self.train_seconds = float(state.get("train_seconds", 0.0))
        # Checkpoints from before the window was saved start an empty window.
        window = state.get("loss_window") or (0.0, 0)
        self._loss_sum, self._loss_count = float(window[0]), int(window[1])

    def _apply_resume_overrides(self) -> list:
        """Set the user's new optimizer options over the checkpoint's; returns the
        messages for the ones that changed."""
        messages = []
        for key, value in self.resume_overrides.items():
            saved = sorted({g[key] for g in self.optimizer.param_groups}, key=repr)
            for g in self.optimizer.param_groups:
                g[key] = value
            if saved != [value]:
                had = saved[0] if len(saved) == 1 else saved
                messages.append(f"{self.name}: resuming at step {self.step} with {key} "
                                f"{value} (the checkpoint had {had})")
        return messages

    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically (rank 0 only). If that fails (a full disk, a
        read-only folder), the file keeps the previous checkpoint and the OSError says which."""
        if self.checkpoint_path is None or not self.is_main:
            return
        try:
            save(self.state_dict(), self.checkpoint_path)
        except OSError as e:
            kept = ("no earlier checkpoint was written" if self._last_checkpoint is None else
                    f"it still holds the checkpoint of step {self._last_checkpoint[0]}")
            reason = e.strerror or str(e)
            raise OSError(e.errno, f"{reason}: could not write the checkpoint of step "
                                   f"{self.step}; {kept}", str(self.checkpoint_path)) from e
        self._last_checkpoint = (self.step, self.checkpoint_path)

    def _rewrite_metrics(self) -> None:
        """Metrics as of the checkpoint: lines a crashed run wrote after it are dropped."""
        if self.metrics_path is None or not self.is_main:
            return
        with atomic_write(self.metrics_path, mode="w") as (f, _):
            for row in self.history:
                f.write(json.dumps(row) + "\n")

    def _append_metrics(self, row: dict) -> None:
        if self.metrics_path is not None and self.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    # ---- evaluation ---------------------------------------------------------
    def _stats_batches(self):
        it = iter(self.bn_stats_loader)
        for _ in range(self.bn_stats_batches):
            try:
                yield next(it)[0].to(self.device)
            except StopIteration:
                return

    def evaluate(self) -> dict:
        row = {"step": self.step}
        if self.eval_loader is None:
            return row
        for rec in self.recorders:
            rec.__enter__()
        try:
            if self.bn_eval == "population":
                with population_statistics(self.model, self._stats_batches()):
                    acc, loss = accuracy_and_loss(self.model, self.eval_loader, self.loss_fn,
                                                  self.device)
            else:
                acc, loss = accuracy_and_loss(self.model, self.eval_loader, self.loss_fn,
                                              self.device)
        finally:
            for rec in self.recorders:
                rec.__exit__(None, None, None)
        row.update(test_acc=acc, test_loss=loss, bn_eval=self.bn_eval)
        for rec in self.recorders:
            snap = rec.snapshot(self.step)
            row.update({f"{rec.name}_{k}": v for k, v in snap.items() if k != "step"})
        return row

    # ---- the loop -------------------------------------------------------------
    def train_step(self) -> float:
        x, y = self.batches.next()
        if self.device != "cpu":
            x, y = x.to(self.device), y.to(self.device)
        loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.data)

    def fit(self, steps: int, resume: bool = False) -> dict:
        """Train until `steps` total steps. Returns a summary dict; `interrupted` is True
        if Ctrl-C stopped it (a checkpoint was written first)."""
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self._checkpoint_to_resume() if resume else None
        if state is not None:
            self.load_state_dict(state)
            self._last_checkpoint = (self.step, self.checkpoint_path)
            self._rewrite_metrics()
            for message in self._apply_resume_overrides():
                print(message, flush=True)
        elif self.metrics_path is not None:
            self._rewrite_metrics()  # a fresh run starts a fresh metrics file
        self.model.train()
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, initial=self.step, desc=self.name, unit="step",
                       dynamic_ncols=True, leave=True, position=self.progress_position)
        interrupted = False
        last_acc = self.history[-1].get("test_acc") if self.history else None
        with _StopRequest() as stop:
            t_start = time.perf_counter()
            agreed_stop = False
            while self.step < steps:
                if stop.requested if self._group.size == 1 else agreed_stop:
                    interrupted = True
                    break
                t0 = time.perf_counter()
                loss = self.train_step()
                if self._group.size > 1:
                    loss, agreed_stop = self._agree(loss, stop.requested)
                self.train_seconds += time.perf_counter() - t0
                self.step += 1
                if not math.isfinite(loss):
                    # The diverged state is NOT saved: the last checkpoint (if any) stays
                    # the last good one, so --resume restarts from before the divergence.
                    if bar is not None:
                        bar.close()
                    raise DivergenceError(self.name, loss, self.step, self._last_checkpoint)
                self._loss_sum += loss
                self._loss_count += 1
                if self.step % self.eval_every == 0 or self.step == steps:
                    row = self.evaluate()
                    row["train_loss"] = self._loss_sum / self._loss_count
                    row["train_seconds"] = self.train_seconds
                    self._loss_sum, self._loss_count = 0.0, 0
                    self.history.append(row)
                    self._append_metrics(row)
                    last_acc = row.get("test_acc", last_acc)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
                if bar is not None:
                    bar.update(1)
                    if self.step % 50 == 0 or self.step == steps:
                        post = {"loss": f"{loss:.4f}",
                                "steps/s": f"{self.step_rate():.0f}"}
                        if last_acc is not None:
                            post["test_acc"] = f"{last_acc:.4f}"
                        bar.set_postfix(post, refresh=False)
            wall = time.perf_counter() - t_start
        if bar is not None:
            bar.close()
        self.save_checkpoint()
        return {"name": self.name, "steps": self.step, "interrupted": interrupted,
                "wall_seconds": wall, "train_seconds": self.train_seconds,
                "steps_per_second": self.step_rate(), "history": self.history}

    def _checkpoint_to_resume(self):
        """The checkpoint's state, read by rank 0 and broadcast to the others; None
        when there is none."""
        path = self.checkpoint_path
        if self._group.size == 1:
            return load(path) if path is not None and path.exists() else None
        state = None
        if self.is_main and path is not None and path.exists():
            state = load(path)
        return self._group.bcast_object(state, 0, f"{self.name}: broadcast of rank 0's "
                                        f"checkpoint")

    def _agree(self, loss: float, stop: bool):
        """(mean loss over the ranks' equal shares = the global batch's loss, whether any
        rank was asked to stop): the same on every rank, so all take the same branch."""
        v = np.array([loss, 1.0 if stop else 0.0])
        self._group.allreduce_(v, what=f"{self.name}: all_reduce of the loss")
        return float(v[0] / self._group.size), bool(v[1] > 0)

    def step_rate(self) -> float:
        return self.step / self.train_seconds if self.train_seconds > 0 else float("nan")


def set_seed_everywhere(seed: int) -> None:
    """Seed minidl's generator (NumPy's legacy global state is not used by minidl)."""
    from ..random import manual_seed
    manual_seed(seed)
    np.random.seed(seed % 2**32)
