"""Per-sample loss statistics (ASSIST's metric list), their test/train ratios, and timers."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saln_exp import distributed
from saln_exp.data.base import BatchPipeline, Split

QUANTILES = {"q50": 0.5, "q90": 0.9, "q99": 0.99}
RATIO_KEYS = ("acc", "loss_mean", "loss_q90", "loss_worst")


def loss_stats(losses: Tensor, correct: Tensor, prefix: str) -> dict[str, float]:
    """Accuracy and the loss distribution of one split. Quantiles interpolate linearly between
    order statistics, as numpy.quantile's default does."""
    losses = losses.double()
    stats = {
        f"{prefix}/acc": correct.double().mean().item(),
        f"{prefix}/loss_mean": losses.mean().item(),
        f"{prefix}/loss_best": losses.min().item(),
        f"{prefix}/loss_worst": losses.max().item(),
    }
    qs = torch.quantile(losses.cpu(), torch.tensor(list(QUANTILES.values()), dtype=torch.float64))
    for name, value in zip(QUANTILES, qs.tolist(), strict=True):
        stats[f"{prefix}/loss_{name}"] = value
    return stats


def ratios(metrics: dict[str, float]) -> dict[str, float]:
    """test / train for the metrics ASSIST tabulates; NaN where train is 0."""
    out = {}
    for key in RATIO_KEYS:
        train, test = metrics[f"train/{key}"], metrics[f"test/{key}"]
        out[f"ratio/{key}"] = test / train if train != 0 else math.nan
    return out


@torch.inference_mode()
def per_sample_outputs(
    model: nn.Module,
    split: Split,
    pipeline: BatchPipeline,
    batch_size: int,
    positions: Tensor | None = None,
    shard: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(losses, predictions, logits) of every sample in eval mode, without augmentation.

    `shard` with several processes: each rank computes a contiguous slice and all are gathered
    (every rank returns the whole split's outputs)."""
    world = distributed.WORLD
    if shard and world.active:
        n = len(split) if positions is None else len(positions)
        mine = torch.arange(n, device=split.targets.device)[world.share(n)]
        local = per_sample_outputs(
            model, split, pipeline, batch_size, mine if positions is None else positions[mine]
        )
        sizes = world.sizes(n)
        return tuple(distributed.all_gather_cat(t, sizes) for t in local)  # type: ignore[return-value]
    was_training = model.training
    model.eval()
    n = len(split) if positions is None else len(positions)
    chunks = [
        slice(start, start + batch_size) if positions is None else positions[start : start + batch_size]
        for start in range(0, n, batch_size)
    ]  # fmt: skip
    losses, preds, logits_all = [], [], []
    for pos, x in zip(chunks, pipeline.batches(split, chunks, train=False), strict=True):
        y = split.targets[pos]
        logits = model(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="none"))
        preds.append(logits.argmax(1))
        logits_all.append(logits)
    model.train(was_training)
    return torch.cat(losses), torch.cat(preds), torch.cat(logits_all)


def model_version(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter or buffer of `model` is modified in place (optimizer steps,
    `load_state_dict`): every tensor counts its in-place writes in `_version`."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((id(t), t._version) for t in tensors)


class SplitOutputs:
    """`per_sample_outputs` of whole splits, reused until the model changes.

    Epochwise filtering (ASSIST Alg. 8) classifies the full training set at each epoch start,
    with the very model the previous epoch's evaluation just classified it with: the second
    pass would return the same numbers, so it is read from here instead (a third of an
    epochwise LeNet epoch on MNIST)."""

    def __init__(self, shard: bool = False) -> None:
        self.shard = shard  # several processes: each computes a slice (see per_sample_outputs)
        self._key: tuple | None = None
        self._outputs: tuple[Tensor, Tensor, Tensor] | None = None

    def get(
        self, model: nn.Module, split: Split, pipeline: BatchPipeline, batch_size: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        key = (id(model), id(split), id(pipeline), batch_size, model.training, model_version(model))
        if key != self._key or self._outputs is None:
            self._outputs = per_sample_outputs(model, split, pipeline, batch_size, shard=self.shard)
            self._key = key
        return self._outputs


def evaluate_split(
    model: nn.Module,
    split: Split,
    pipeline: BatchPipeline,
    prefix: str,
    batch_size: int,
    positions: Tensor | None = None,
    cache: SplitOutputs | None = None,
    shard: bool = False,
) -> dict[str, float]:
    if cache is not None and positions is None:
        losses, preds, _ = cache.get(model, split, pipeline, batch_size)
    else:
        losses, preds, _ = per_sample_outputs(
            model, split, pipeline, batch_size, positions, shard=shard
        )
    targets = split.targets if positions is None else split.targets[positions]
    return loss_stats(losses, preds == targets, prefix)


class Timers:
    """Wall-clock seconds per phase. `sync` makes CUDA finish queued work before reading the clock,
    so a phase is charged for its own kernels, not the next one's."""

    def __init__(self, sync: bool = False):
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync = sync

    @contextmanager
    def __call__(self, phase: str):
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[phase] += time.perf_counter() - start

    def reset(self) -> dict[str, float]:
        out = dict(self.seconds)
        self.seconds.clear()
        return out


def summarize(
    history: list[dict[str, float]], target_acc: float | None
) -> dict[str, float | int | None]:
    """End-of-run numbers: final and best test accuracy, and when the target was first reached
    (in training seconds = train + select, wall seconds, back-propagated samples, epochs)."""
    last = history[-1]
    best = max(history, key=lambda m: m["test/acc"])
    out: dict[str, float | int | None] = {
        "final_test_acc": last["test/acc"],
        "best_test_acc": best["test/acc"],
        "best_epoch": best["epoch"],
        "final_train_acc": last["train/acc"],
        "final_val_acc": last.get("val/acc"),
        "epochs": last["epoch"],
        "train_time_s": last["time/train_s"] + last["time/select_s"],
        "total_time_s": last["time/wall_s"],
        "prepare_time_s": last.get("time/prepare_s", 0.0),
        "samples_backprop": last["samples/backprop"],
        "optim_steps": last["optim/steps"],
        "target_acc": target_acc,
        "time_to_target_s": None,
        "wall_to_target_s": None,
        "backprop_to_target": None,
        "epoch_to_target": None,
    }
    if target_acc is not None:
        hit = next((m for m in history if m["test/acc"] >= target_acc), None)
        if hit is not None:
            out.update(
                time_to_target_s=hit["time/train_s"] + hit["time/select_s"],
                wall_to_target_s=hit["time/wall_s"],
                backprop_to_target=hit["samples/backprop"],
                epoch_to_target=hit["epoch"],
            )
    return out
