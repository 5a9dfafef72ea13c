"""Reproducible label corruption, so selectors can be judged on data with known wrong labels."""

from __future__ import annotations

import torch
from torch import Tensor

from saln_exp import rng

NOISE_KINDS = ("symmetric", "pair")


def corrupt_labels(
    targets: Tensor, num_classes: int, rate: float, kind: str, seed: int
) -> tuple[Tensor, Tensor]:
    """Return (noisy targets, positions whose label changed).

    Exactly round(rate * n_c) samples of each class c are corrupted, so `rate` is the true noise
    rate. `symmetric`: the new label is uniform over the other classes. `pair` (class-conditional):
    class c becomes c + 1 mod C, the pair-flip of Han et al. 2018.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"label_noise.kind must be one of {NOISE_KINDS}, got {kind!r}")
    g = rng.generator(int(seed), "label_noise")  # independent of the split's stream
    targets = targets.clone().cpu()
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(targets == c).flatten()
        n_flip = round(rate * len(members))
        if n_flip:
            chosen.append(members[torch.randperm(len(members), generator=g)[:n_flip]])
    if not chosen:
        return targets, torch.zeros(0, dtype=torch.long)
    flipped = torch.sort(torch.cat(chosen)).values
    old = targets[flipped]
    if kind == "pair":
        new = (old + 1) % num_classes
    else:  # a uniform offset in 1..C-1 never lands on the old class
        offset = torch.randint(1, num_classes, (len(flipped),), generator=g)
        new = (old + offset) % num_classes
    targets[flipped] = new
    return targets, flipped
