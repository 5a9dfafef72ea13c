"""ASSIST's loss-weighted random selector: draw k samples without replacement with probability
proportional to their loss (the sorted losses as a density, akin to Jiang et al. 2019)."""

from __future__ import annotations

import torch

from saln_exp.selectors.base import Batch, BatchView, Selector


class LossWeighted(Selector):
    name = "loss_weighted"
    style = ("#332288", "d")  # colour and marker in every figure (report/style.py)

    def __init__(self, filter_ratio: float = 0.5, **common):
        super().__init__(filter_ratio=filter_ratio, **common)

    def choose(self, batch: Batch, view: BatchView):
        weights = view.losses.double().cpu().clamp_min(1e-12)  # a zero loss still has a tiny chance
        k = self.keep_count(len(batch))
        return torch.multinomial(weights, k, replacement=False, generator=self.generator), {}
