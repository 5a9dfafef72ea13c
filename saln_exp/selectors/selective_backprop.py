"""Selective-Backprop (Jiang et al., "Accelerating Deep Learning by Focusing on the Biggest
Losers", 2019), as its authors' `RelativeProbabilityCalculator` computes it.

Each sample of the candidate batch, in order, first adds its loss to a history of the last
`history` losses (1024 in the paper), then is kept with probability

    P = max(sampling_min, (percentile of its loss in the history / 100) ** beta)

where the percentile is scipy's `percentileofscore(history, loss, kind="rank")` (ties averaged).
`beta` sets the selectivity: on a stationary loss distribution about 1 / (1 + beta) of the samples
are kept (the paper evaluates beta = 1, 2, 3). The number kept varies from batch to batch; as in
the paper, which backpropagates once a batch's worth of selected samples is staged, the YAML turns
on accumulation. `filter_ratio` is not used (beta is the selectivity). Losses come from the
selector's eval-mode forward (the paper uses the training forward it already made).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saln_exp.errors import ConfigError
from saln_exp.selectors.base import Batch, BatchView, Selector


class SelectiveBackprop(Selector):
    name = "selective_backprop"
    style = ("#661100", "1")  # colour and marker in every figure (report/style.py)

    def __init__(self, beta: float = 1.0, history: int = 1024, sampling_min: float = 0.0, **common):
        super().__init__(**common)
        if float(beta) <= 0:
            raise ConfigError(
                f"selector.beta must be > 0 for selector=selective_backprop, got {beta}"
            )
        if int(history) < 1:
            raise ConfigError(f"selector.history must be at least 1, got {history}")
        if not 0.0 <= float(sampling_min) <= 1.0:
            raise ConfigError(f"selector.sampling_min must be in [0, 1], got {sampling_min}")
        self.beta, self.history, self.sampling_min = float(beta), int(history), float(sampling_min)
        self.losses = torch.empty(0)  # the last `history` losses, oldest first

    def probabilities(self, losses: Tensor) -> Tensor:
        """Each loss joins the history, then gets its keep probability (sample by sample)."""
        out = torch.empty(len(losses))
        for i, loss in enumerate(losses.float().cpu()):
            self.losses = torch.cat([self.losses, loss.view(1)])[-self.history :]
            below, at_or_below = (self.losses < loss).sum(), (self.losses <= loss).sum()
            # scipy's kind="rank": the mean of the strict and weak percentiles, ties included
            percentile = (
                (below + at_or_below + (at_or_below > below)).item() * 50.0 / len(self.losses)
            )
            out[i] = max(self.sampling_min, (percentile / 100.0) ** self.beta)
        return out

    def choose(self, batch: Batch, view: BatchView):
        p = self.probabilities(view.losses)
        kept = torch.nonzero(torch.rand(len(p), generator=self.generator) < p).flatten()
        return kept, {"keep_prob_mean": float(p.mean())}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "losses": self.losses}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.losses = state["losses"]
