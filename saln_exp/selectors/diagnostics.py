"""Two numbers per candidate batch that place any selector among the known ones:

- `class_entropy_ratio`: entropy of the kept samples' labels over that of the whole batch's
  (1 = the kept set is as class-balanced as the batch, lower = it favours some classes);
- `topk_loss_overlap`: the fraction of the kept set that a top-k-by-learner-loss rule with the same
  k would also keep (1 = behaves like `topk_loss`, about k/n = like `uniform`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def label_entropy(labels: Tensor, num_classes: int) -> float:
    counts = torch.bincount(labels, minlength=num_classes).float()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def class_entropy_ratio(batch_labels: Tensor, kept: Tensor, num_classes: int) -> float:
    whole = label_entropy(batch_labels, num_classes)
    if whole == 0 or len(kept) == 0:
        return math.nan  # one class in the batch (or nothing kept): balance is not defined
    return label_entropy(batch_labels[kept], num_classes) / whole


def topk_loss_overlap(losses: Tensor, kept: Tensor) -> float:
    if len(kept) == 0:
        return math.nan
    top = torch.topk(losses, len(kept)).indices
    mask = torch.zeros(len(losses), dtype=torch.bool, device=losses.device)
    mask[top] = True
    return float(mask[kept].float().mean())
