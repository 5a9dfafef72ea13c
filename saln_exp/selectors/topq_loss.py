"""ASSIST's top-q selector: keep every sample whose loss is at or above the batch's q-quantile
(the batch size varies; the highest-loss sample is always kept)."""

from __future__ import annotations

import torch

from saln_exp.errors import ConfigError
from saln_exp.selectors.base import Batch, BatchView, Selector


class TopQLoss(Selector):
    name = "topq_loss"
    style = ("#44AA99", "h")  # colour and marker in every figure (report/style.py)

    def __init__(self, q: float = 0.5, **common):
        super().__init__(**common)
        if not 0.0 < float(q) < 1.0:
            raise ConfigError(f"selector.q must be in (0, 1), got {q}")
        self.q = float(q)

    def choose(self, batch: Batch, view: BatchView):
        losses = view.losses
        threshold = torch.quantile(losses, self.q)
        return torch.nonzero(losses >= threshold).flatten(), {"loss_threshold": threshold.item()}
