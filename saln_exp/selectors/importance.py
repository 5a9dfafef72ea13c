"""Importance sampling (Katharopoulos and Fleuret, "Not All Samples Are Created Equal: Deep
Learning with Importance Sampling", ICML 2018, Algorithm 1 without its variance-reduction switch).

From a candidate batch of B samples, b = int(B * (1 - filter_ratio)) draws are made with
replacement, sample i with probability p_i = g_i / sum_j g_j, and each draw is weighted by
w_i = 1 / (B p_i), so the weighted mean over the draws is an unbiased estimate of the candidate
batch's mean gradient. The score g is the paper's upper bound of the per-sample gradient norm,
||softmax(z_i) - onehot(y_i)||_2 (the gradient of the loss with respect to the logits, Eq. 20),
or, with `score: loss`, the loss itself (the paper's loss-based baseline).

The selector contract holds unique positions, so a sample drawn c_i times appears once with weight
(k / b) * c_i * w_i, k the number of distinct samples: the trainer's mean of weight * loss over the
k kept samples is then exactly (1 / b) * sum over the draws of w * loss. Not implemented: the
paper's switch that samples uniformly until its estimated variance reduction tau exceeds tau_th
(it would need the presample's gradient norms at every step; every batch here is importance-sampled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saln_exp.errors import ConfigError
from saln_exp.selectors.base import Batch, BatchView, Selector

SCORES = ("upper_bound", "loss")


class ImportanceSampling(Selector):
    name = "importance"
    style = ("#6699CC", "2")  # colour and marker in every figure (report/style.py)

    def __init__(self, score: str = "upper_bound", **common):
        super().__init__(**common)
        if score not in SCORES:
            raise ConfigError(
                f"selector.score must be one of {SCORES} for selector=importance, got {score!r}"
            )
        self.score = score

    def scores(self, batch: Batch, view: BatchView) -> Tensor:
        if self.score == "loss":
            return view.losses.float()
        onehot = F.one_hot(batch.y, view.logits.shape[1]).float()
        return (view.probabilities.float() - onehot).norm(dim=1)

    def draw(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """(distinct positions, their weights) for b draws with replacement, p proportional to score."""
        n, b = len(scores), self.keep_count(len(scores))
        scores = scores.cpu().clamp_min(0)
        p = scores / scores.sum() if scores.sum() > 0 else torch.full((n,), 1.0 / n)
        draws = torch.multinomial(p, b, replacement=True, generator=self.generator)
        counts = torch.bincount(draws, minlength=n)
        positions = torch.nonzero(counts).flatten()
        w = 1.0 / (n * p[positions])  # 1 / (B p_i): unbiased for the candidate batch's mean
        return positions, (len(positions) / b) * counts[positions] * w

    def choose(self, batch: Batch, view: BatchView):
        positions, weights = self.draw(self.scores(batch, view))
        return positions, {"distinct_frac": len(positions) / len(batch)}, weights
