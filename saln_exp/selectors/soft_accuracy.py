"""ASSIST Algorithm 6 (soft accuracy + top-k): the misclassified samples (top-k of them by loss,
k from filter_ratio; all of them at the default 0), plus every correctly classified sample whose
top-1 minus top-2 probability is at most `margin`: the ones near a decision boundary."""

from __future__ import annotations

import torch

from saln_exp.errors import ConfigError
from saln_exp.selectors.base import Batch, BatchView, Selector


class SoftAccuracyFilter(Selector):
    name = "soft_accuracy"
    style = ("#F0E442", ">")  # colour and marker in every figure (report/style.py)
    overflow_rule = "discard"  # with accumulation: ASSIST Alg. 10 drops what does not fit

    def __init__(self, margin: float = 0.1, **common):
        super().__init__(**common)
        if not 0.0 < float(margin) < 1.0:
            raise ConfigError(f"selector.margin must be in (0, 1), got {margin}")
        self.margin = float(margin)

    def choose(self, batch: Batch, view: BatchView):
        wrong = view.predictions != batch.y
        top2 = view.probabilities.topk(2, dim=1).values
        marginal = ~wrong & (top2[:, 0] - top2[:, 1] <= self.margin)
        wrong_pos = torch.nonzero(wrong).flatten()
        k = min(self.keep_count(len(batch)), len(wrong_pos))
        hardest = wrong_pos[torch.topk(view.losses[wrong_pos], k).indices]
        keep = torch.cat([hardest, torch.nonzero(marginal).flatten()])
        return keep, {
            "error_frac": wrong.float().mean().item(),
            "marginal_frac": marginal.float().mean().item(),
        }
