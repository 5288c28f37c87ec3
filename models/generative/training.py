"""Shared training machinery for the generative models: base config, trainer protocol, fit loop."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
RESUME_IGNORES = frozenset({"epochs", "log_every", "n_samples"})

Batch = Tensor | tuple[Tensor, Tensor]
"""What a trainer steps on: a tensor of examples, or (images, labels) for a conditional model."""


@dataclass(frozen=True)
class Quality:
    """The per-epoch metric a model is judged by (a key of the epoch row), and which way is up."""

    metric: str
    mode: Literal["min", "max"]
    description: str

    def better(self, value: float, best: float | None) -> bool:
        """Whether `value` beats `best` (None: nothing yet; NaN never wins)."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best


def size_of(data: Batch) -> int:
    """Number of examples in a tensor or an (images, labels) pair."""
    return len(data if isinstance(data, Tensor) else data[0])


def take(data: Batch, idx: Tensor) -> Batch:
    """Rows `idx` of a tensor or of both members of an (images, labels) pair."""
    if isinstance(data, Tensor):
        return data[idx.to(data.device)]
    return (data[0][idx.to(data[0].device)], data[1][idx.to(data[1].device)])


class TrainConfig(BaseModel):
    """Training knobs every generative model shares; each model's config extends this one."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    epochs: PositiveInt = 10
    """Passes over the training split."""
    batch_size: PositiveInt = 128
    """Images (or points) per optimiser step."""
    learning_rate: PositiveFloat = 1e-3
    """Adam step size."""
    seed: int = 0
    """Seeds the split, the initial weights, the shuffling and the sampling noise."""
    log_every: PositiveInt = 100
    """Write a step log line (and, for the GAN, gradient-norm diagnostics) every this many steps."""
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of the data held out as the validation (test) split."""
    max_train: PositiveInt | None = None
    """Train on only the first this-many rows of the training split (smoke runs); None = all."""
    max_val: PositiveInt | None = None
    """Evaluate on only the first this-many validation rows; None = all."""
    n_samples: PositiveInt = 64
    """Samples drawn for the published sample grid."""

    def config_hash(self, exclude: frozenset[str] = frozenset()) -> str:
        """A short, stable hash of every field (but `exclude`), to tell configs apart."""
        blob = json.dumps(self.model_dump(mode="json", exclude=set(exclude)), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resume_hash(self) -> str:
        """Hash of the fields that shape training up to any epoch: a rerun resumes on a match.

        `epochs`, `log_every` and `n_samples` are left out, so an interrupted run can be
        resumed with more (or fewer) epochs and lands where an unbroken run would.
        """
        return self.config_hash(RESUME_IGNORES)


class GenerativeTrainer(Protocol):
    """What the fit loop needs from a model: one step, an evaluation, samples and its state."""

    config: TrainConfig
    quality: Quality

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimiser step on `batch`; returns scalar metrics including `loss`."""
        ...

    def evaluate(self, data: Any) -> dict[str, float]:
        """Metrics on held-out `data` (no gradients), averaged per example."""
        ...

    def diagnostics(self, batch: Any) -> dict[str, float]:
        """Extra scalars logged every `log_every` steps (may be empty)."""
        ...

    def sample(self, n: int) -> Tensor:
        """`n` samples from the model, on the CPU."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Every module's and optimiser's state, for a checkpoint."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        ...


@dataclass
class FitState:
    """Where training stands: completed epochs, optimiser steps, metric rows, the best epoch."""

    epoch: int = 0
    step: int = 0
    epoch_rows: list[dict[str, float]] = field(default_factory=list)
    step_rows: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    """Epoch (1-based) with the best quality metric so far; 0 = none yet."""
    best_value: float | None = None
    """That epoch's quality metric."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so a checkpoint loads with `weights_only=True`."""
        return {"epoch": self.epoch, "step": self.step, "epoch_rows": self.epoch_rows,
                "step_rows": self.step_rows, "best_epoch": self.best_epoch,
                "best_value": self.best_value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitState:
        """Inverse of `to_dict` (checkpoints from before best tracking load with no best)."""
        best = d.get("best_value")
        return cls(int(d["epoch"]), int(d["step"]), list(d["epoch_rows"]), list(d["step_rows"]),
                   int(d.get("best_epoch", 0)), None if best is None else float(best))


def module_state(modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 ) -> dict[str, Any]:
    """One dict with every module's and optimiser's state dict, keyed by name."""
    return {"modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()}}


def load_module_state(state: dict[str, Any], modules: dict[str, nn.Module],
                      optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Restore `module_state` output; optimiser state is skipped when the checkpoint has none."""
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    for k, o in optimizers.items():
        if k in state.get("optimizers", {}):
            o.load_state_dict(state["optimizers"][k])


def checkpoint_payload(model_name: str, trainer: GenerativeTrainer, fit: FitState,
                       ) -> dict[str, Any]:
    """What goes into a checkpoint: enough to rebuild the model with no outside knowledge."""
    return {"format": CHECKPOINT_FORMAT, "model": model_name,
            "config": trainer.config.model_dump(mode="json"),
            "config_hash": trainer.config.config_hash(),
            "resume_hash": trainer.config.resume_hash(), "state": trainer.state_dict(),
            "fit": fit.to_dict()}


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled index batches covering 0..n-1 once (the last one may be short)."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def evaluate_in_batches(fn: Callable[[Tensor], dict[str, float]], data: Tensor,
                        batch_size: int) -> dict[str, float]:
    """Average per-example metrics of `fn` over `data` in chunks, weighting by chunk size."""
    totals: dict[str, float] = {}
    for chunk in data.split(batch_size):
        for k, v in fn(chunk).items():
            totals[k] = totals.get(k, 0.0) + v * len(chunk)
    return {k: v / len(data) for k, v in totals.items()}


def train_steps(trainer: GenerativeTrainer, batch: Batch, steps: int) -> list[float]:
    """Run `steps` optimiser steps on one fixed batch and return the losses (overfit checks)."""
    return [trainer.train_step(batch)["loss"] for _ in range(steps)]


def fit(trainer: GenerativeTrainer, train: Batch, val: Batch, *,
        state: FitState | None = None,
        on_epoch_end: Callable[[FitState, bool], None] | None = None,
        show_progress: bool = False, label: str = "train") -> FitState:
    """Train for `trainer.config.epochs` epochs, resuming after `state.epoch` if given.

    `train` and `val` (tensors, or (images, labels) pairs) already sit on the trainer's
    device. Each epoch's shuffle comes from a generator seeded by (seed, epoch), so a resumed
    run sees the same batches as an unbroken one. After every epoch the validation metrics
    (the model's quality metric among them) are computed, a row is appended to
    `state.epoch_rows`, the best epoch is updated, a log line is written and
    `on_epoch_end(state, is_best)` is called (the pipeline writes its checkpoints there).
    One progress bar covers the whole run, with its ETA; log lines print above it.
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    cfg = trainer.config
    quality = trainer.quality
    state = state or FitState()
    if state.epoch >= cfg.epochs:
        log.info("%s: already trained %d/%d epochs, nothing to do", label, state.epoch, cfg.epochs)
    n_train = size_of(train)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    bar = tqdm(total=steps_per_epoch * cfg.epochs, initial=steps_per_epoch * min(state.epoch,
               cfg.epochs), desc=label, disable=not show_progress, unit="step", dynamic_ncols=True)
    # Console handlers (the root's, and any on our own loggers) print above the bar, not into it.
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in ("models", "pipelines")
                                       if logging.getLogger(n).handlers]
    redirect = logging_redirect_tqdm(loggers=loggers) if show_progress else nullcontext()
    with bar, redirect:
        for epoch in range(state.epoch, cfg.epochs):
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            sums: dict[str, float] = {}
            seen = 0
            started, cpu_started = time.perf_counter(), time.process_time()
            for idx in batches(n_train, cfg.batch_size, generator):
                batch = take(train, idx)
                metrics = trainer.train_step(batch)
                state.step += 1
                seen += len(idx)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                if state.step % cfg.log_every == 0:
                    row = {"step": float(state.step), "epoch": float(epoch + 1), **metrics,
                           **trainer.diagnostics(batch)}
                    state.step_rows.append(row)
                    log.info("%s step %d: %s", label, state.step,
                             _fmt(row, skip=("step", "epoch")))
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{metrics['loss']:.4g}")
            train_s = time.perf_counter() - started
            cpu_s = time.process_time() - cpu_started
            val_metrics = trainer.evaluate(val)
            state.epoch = epoch + 1
            row = {"epoch": float(state.epoch), "step": float(state.step),
                   **{f"train_{k}": v / seen for k, v in sums.items()},
                   **{f"val_{k}": v for k, v in val_metrics.items()},
                   "train_seconds": train_s, "train_cpu_seconds": cpu_s,
                   "examples_per_s": seen / max(train_s, 1e-9)}
            value = row.get(quality.metric, math.nan)
            is_best = quality.better(value, state.best_value)
            if is_best:
                state.best_epoch, state.best_value = state.epoch, value
            state.epoch_rows.append(row)
            log.info("%s epoch %d/%d: %s=%.4g (best %.4g at epoch %d) %s", label, state.epoch,
                     cfg.epochs, quality.metric, value,
                     math.nan if state.best_value is None else state.best_value,
                     state.best_epoch, _fmt(row, skip=("epoch", "step", quality.metric)))
            if show_progress:
                bar.set_postfix(epoch=f"{state.epoch}/{cfg.epochs}",
                                **{quality.metric: f"{value:.4g}"})
            if on_epoch_end is not None:
                on_epoch_end(state, is_best)
    return state


def grad_norm(loss: Tensor, params: list[nn.Parameter]) -> float:
    """L2 norm of d loss / d params over all `params` (the graph is kept for later backward)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    squares = [g.pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def _fmt(row: dict[str, float], skip: tuple[str, ...] = ()) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in skip)
