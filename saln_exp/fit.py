"""A plain short training loop for auxiliary models: the reference model of JEST / RHO-LOSS and
the scoring models of the pruning methods. No selection, no evaluation, no checkpoints: the
learner's loop is saln_exp/trainer.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from saln_exp.data.base import DataBundle, Split
from saln_exp.errors import NonFiniteLossError
from saln_exp.optim import build_optimizer


@dataclass(frozen=True)
class Recipe:
    """How the learner is trained, as plain values: what an auxiliary model (the reference model
    of JEST / RHO-LOSS, pruning's scoring models) is trained with where its own options say
    nothing. `model` and `optimizer` are their config groups' keys."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    batch_size: int
    seed: int


def fit(
    model: nn.Module,
    split: Split,
    data: DataBundle,
    settings: dict[str, Any],
    generator: torch.Generator,
    positions: Tensor | None = None,
    on_batch: Callable[[int, Tensor, Tensor], None] | None = None,
    desc: str = "scoring model",
    progress: bool = False,
    lr_key: str = "prune.optimizer.lr (null = optimizer.lr)",
) -> nn.Module:
    """Plain mini-batch training for `settings["epochs"]` passes over `positions` of `split`
    (all of it when None): no selection, no evaluation. `on_batch(epoch, positions, logits)` sees
    every training batch's own predictions (forgetting events are counted from them)."""
    device = split.targets.device
    positions = torch.arange(len(split), device=device) if positions is None else positions
    optimizer = build_optimizer(settings["optimizer"], model.parameters())
    bs = settings["batch_size"]

    def epoch_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        order = positions[torch.randperm(len(positions), generator=generator).to(device)]
        chunks = [order[start : start + bs] for start in range(0, len(order), bs)]
        for pos, x in zip(chunks, data.pipeline.batches(split, chunks, train=True), strict=True):
            yield pos, x, split.targets[pos]

    return train_epochs(
        model, optimizer, settings["epochs"], epoch_batches, on_batch, desc, progress, lr_key
    )


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    epoch_batches: Callable[[int], Iterable[tuple[Any, Tensor, Tensor]]],
    on_batch: Callable[[int, Any, Tensor], None] | None = None,
    desc: str = "scoring model",
    progress: bool = False,
    lr_key: str = "the optimizer's lr",
) -> nn.Module:
    """The loop itself: for each epoch, one optimizer step on the mean cross-entropy of every
    `(key, x, y)` that `epoch_batches(epoch)` yields (`key` is handed to `on_batch` with the
    batch's logits). `fit` feeds it a split; `selection.train_reference`, a user's DataLoader."""
    model.train()
    for epoch in tqdm(range(epochs), desc=desc, leave=False, disable=None if progress else True):
        for key, x, y in epoch_batches(epoch):
            logits = model(x).float()
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the {desc} diverged (loss {loss.item()}) in epoch {epoch + 1}; lower {lr_key}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_batch is not None:
                on_batch(epoch, key, logits.detach())
    return model.eval()
