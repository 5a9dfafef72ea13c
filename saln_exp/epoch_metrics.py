"""What one epoch's line of metrics.jsonl says, and how it is gathered.

The trainer counts (`EpochStats`, per candidate batch and per step) and times; this module turns
the counts, the selections' diagnostics and the end-of-epoch evaluation into the row that
metrics.jsonl, W&B and the report read. Every key of that row is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from saln_exp import rng
from saln_exp.data.base import DataBundle
from saln_exp.forgetting import ForgettingTracker
from saln_exp.metrics import SplitOutputs, evaluate_split, ratios
from saln_exp.selectors import Batch, BatchView, Selection
from saln_exp.selectors.diagnostics import class_entropy_ratio, topk_loss_overlap

if TYPE_CHECKING:
    from saln_exp.trainer_state import Progress

# timed phases, in the order their time/<phase>_s keys are written (then time/wall_s)
TIME_PHASES = ("train", "select", "eval", "diag", "prepare")


@dataclass
class EpochStats:
    """Selection and training counts of the epoch in progress (part of mid-epoch checkpoints)."""

    seen: int = 0
    kept: int = 0
    candidate_batches: int = 0
    steps: int = 0
    backprop: int = 0
    fallbacks: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    forget_events: int = 0
    diagnostics: dict[str, list[float]] = field(default_factory=dict)

    def add_diagnostics(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.diagnostics.setdefault(key, []).append(float(value))

    def as_metrics(self, overflow: int, staged: int) -> dict[str, float]:
        out = {
            "select/kept_frac": self.kept / max(self.seen, 1),
            "select/fallbacks": self.fallbacks,
            "select/overflow": overflow,
            "select/staged": staged,
            "select/raw_batches_per_step": self.candidate_batches / self.steps
            if self.steps
            else float("nan"),
            "select/candidate_batches": self.candidate_batches,
            "train_batch/loss": self.loss_sum / max(self.backprop, 1),
            "train_batch/acc": self.correct / max(self.backprop, 1),
            "forget/events_epoch": self.forget_events,
        }
        for key, values in self.diagnostics.items():
            finite = [v for v in values if np.isfinite(v)]
            out[f"select/{key}"] = float(np.mean(finite)) if finite else float("nan")
        return out

    def live_numbers(self) -> dict[str, str]:
        """The progress bar's postfix: the epoch so far."""
        return {
            "loss": f"{self.loss_sum / max(self.backprop, 1):.3f}",
            "acc": f"{self.correct / max(self.backprop, 1):.3f}",
            "kept": f"{self.kept / max(self.seen, 1):.2f}",
        }


def selection_diagnostics(
    batch: Batch,
    view: BatchView,
    selection: Selection,
    data: DataBundle,
    label_noise: bool,
    loss_diagnostics: bool,
) -> dict[str, float]:
    """The selector's own diagnostics plus what places any selection among the others: noisy
    labels kept, class balance, and (when losses are at hand) how loss-driven it was."""
    values = dict(selection.diagnostics)
    if len(data.noisy) and label_noise:
        values["noisy_kept_frac"] = (
            data.noisy[batch.index[selection.positions]].float().mean().item()
        )
        values["noisy_batch_frac"] = data.noisy[batch.index].float().mean().item()
    dropped_some = len(selection.positions) < len(batch)
    # nothing dropped: as balanced as the batch by definition, and no device round trip
    values["class_entropy_ratio"] = (
        class_entropy_ratio(batch.y, selection.positions, data.num_classes) if dropped_some else 1.0
    )
    # free when the selector already looked at losses; otherwise an extra forward, on request
    if view.has("losses") or (loss_diagnostics and dropped_some):
        losses = view.losses
        dropped = torch.ones(len(batch), dtype=torch.bool, device=losses.device)
        dropped[selection.positions] = False
        values["topk_loss_overlap"] = topk_loss_overlap(losses, selection.positions)
        values["loss_kept"] = losses[~dropped].mean().item()
        values["loss_dropped"] = losses[dropped].mean().item() if dropped.any() else float("nan")
    return values


def train_eval_positions(
    n_train: int, size: int | None, split_seed: int, device: torch.device
) -> Tensor | None:
    """The fixed, seeded subset of the train split evaluated every epoch (`eval.train_subset`);
    None: all of it."""
    if size is None or int(size) >= n_train:
        return None
    g = rng.generator(split_seed, "train_eval_subset")
    return torch.sort(torch.randperm(n_train, generator=g)[: int(size)]).values.to(device)


def evaluate(
    model: nn.Module,
    data: DataBundle,
    batch_size: int,
    train_positions: Tensor | None,
    train_outputs: SplitOutputs,
    forgetting: ForgettingTracker,
    shard: bool = False,
) -> dict[str, float]:
    """ASSIST's metrics over the FULL train (or its fixed subset), val and test splits.

    `train_outputs` is shared with epochwise selectors, which classify the same split with the
    same model at the next epoch's start.

    `shard` with several processes: each rank evaluates a slice of every split and the
    per-sample losses and predictions are gathered, so the metrics (quantiles too) are those of
    the whole split on every rank."""
    pipe = data.pipeline
    metrics = evaluate_split(
        model, data.train, pipe, "train", batch_size, train_positions, train_outputs, shard
    )
    if data.val is not None:
        metrics.update(evaluate_split(model, data.val, pipe, "val", batch_size, shard=shard))
    metrics.update(evaluate_split(model, data.test, pipe, "test", batch_size, shard=shard))
    metrics.update(ratios(metrics))
    metrics.update(forgetting.summary(data.train.indices))
    return metrics


def epoch_row(
    evaluation: dict[str, float], overflow: int, staged: int, progress: Progress, lr: float
) -> dict[str, Any]:
    """The finished epoch's line of metrics.jsonl: its evaluation, its selection and training
    counts (`overflow`: kept samples accumulation discarded this epoch; `staged`: kept samples
    waiting for the next step at its end), then the run's running totals (clocks already folded
    into `progress.seconds`)."""
    row: dict[str, Any] = {**evaluation, **progress.epoch_stats.as_metrics(overflow, staged)}
    row["epoch"] = progress.epoch
    for phase in (*TIME_PHASES, "wall"):
        row[f"time/{phase}_s"] = progress.seconds.get(phase, 0.0)  # older checkpoints lack some
    row.update(
        {
            "samples/seen": progress.seen,
            "samples/backprop": progress.backprop,
            "optim/steps": progress.steps,
            "optim/lr": lr,
        }
    )
    return row
