"""The bare loops the runner is measured against: the limit of training and evaluation here.

A bare training epoch walks a random permutation of the in-memory training tensors (already
normalised; with augmentation, the run's own batched augmentation of each slice) and takes one
forward, backward and SGD step per slice: no DataLoader, no selection, no bookkeeping, nothing a
runner could still remove. A bare inference pass runs the same tensors in order, in eval mode
under inference_mode, and computes what evaluation reports (per-sample losses, predictions).
Sections 3 and 6 time the runner against these."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saln_exp.data.base import DataBundle, Split

BatchOf = Callable[[Tensor | slice], Tensor]  # positions -> the model's input for them


def rows(
    data: DataBundle, split: Split, augment: bool = False, positions: Tensor | None = None
) -> tuple[BatchOf, Tensor]:
    """The model's input for slices of `split` (of its rows at `positions`, if given) and their
    labels: rows of a normalised copy made once, here, outside any timing; with augmentation,
    the run's pipeline on each slice (the runner augments every batch anew too)."""
    images = split.images if positions is None else split.images[positions]
    targets = split.targets if positions is None else split.targets[positions]
    if augment:
        return lambda chunk: data.pipeline(images[chunk], train=True), targets
    with torch.no_grad():
        normalised = data.pipeline(images, train=False)
    return lambda chunk: normalised[chunk], targets


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_of: BatchOf,
    targets: Tensor,
    batch_size: int,
) -> int:
    """One bare training epoch; returns the number of images trained on."""
    model.train()
    order = torch.randperm(len(targets), device=targets.device)
    for start in range(0, len(targets), batch_size):
        positions = order[start : start + batch_size]
        loss = F.cross_entropy(model(batch_of(positions)), targets[positions])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(targets)


@torch.inference_mode()
def inference(model: nn.Module, batch_of: BatchOf, targets: Tensor, batch_size: int) -> int:
    """One bare inference pass (losses and predictions of every sample); returns the number of
    images."""
    was_training = model.training
    model.eval()
    for start in range(0, len(targets), batch_size):
        chunk = slice(start, start + batch_size)  # a view of the normalised rows, no copy
        logits = model(batch_of(chunk)).float()
        F.cross_entropy(logits, targets[chunk], reduction="none")
        logits.argmax(1)
    model.train(was_training)
    return len(targets)
