"""Importance sampling (Katharopoulos and Fleuret, "Not All Samples Are Created Equal: Deep
Learning with Importance Sampling", ICML 2018, Algorithm 1 without its variance-reduction switch),
checked against its authors' `importance_sampling/training.py::ImportanceTraining` and
`samplers.py::ModelSampler` (github.com/idiap/importance-sampling at commit
9c9cab2ac91081ae2b64f99891504155057c09e3).

From a candidate batch of B samples, b = int(B * (1 - filter_ratio)) draws are made with
replacement, sample i with probability p_i = g_i / sum_j g_j, and each draw is weighted by
w_i = 1 / (B p_i), so the weighted mean over the draws is an unbiased estimate of the candidate
batch's mean gradient. The score g is the paper's upper bound of the per-sample gradient norm,
||softmax(z_i) - onehot(y_i)||_2 (the gradient of the loss with respect to the logits, Eq. 20),
or, with `score: loss`, the loss itself (the paper's loss-based baseline).

The selector contract holds unique positions, so a sample drawn c_i times appears once with weight
(k / b) * c_i * w_i, k the number of distinct samples: the trainer's mean of weight * loss over the
k kept samples is then exactly (1 / b) * sum over the draws of w * loss.

`variance_reduction: true` adds the paper's switch (Algorithm 1, as the authors'
`ConditionalStartSampler` with `VarianceReductionCondition` runs it): train on b uniformly drawn
samples of the candidate batch (unweighted) until an exponential moving average tau of the
estimated variance reduction exceeds tau_th, and importance-sample from then on while it does.
After each batch, tau <- a tau + (1 - a) / sqrt(1 - ||g - u||^2 / ||g||^2), g the scores
normalised to sum 1 and u = 1/n, over the presample's B scores when importance-sampling and over
the b trained samples' scores otherwise; tau starts at 0, a = `tau_momentum` (0.9), and tau_th is
Eq. 29's (B + 3b) / (3b) unless given. (The estimate equals sqrt(n ||g||^2), since
||g - u||^2 = ||g||^2 - 1/n; on a uniform step n = b, so tau never exceeds sqrt(b) there: with a
trained batch of a few samples the switch cannot turn on.) One difference in cost, not in numbers: the uniform steps
read the b samples' scores from the selector's eval-mode forward of the whole candidate batch,
where the paper reuses its training forward of the b samples. Off by default, so every batch is
importance-sampled (the sampler the paper's experiments compare, and this selector's behaviour
before the switch existed).

The default `filter_ratio` keeps a third of the candidate batch: the code's `presample=3.0`,
B = 3b. Two differences from that code remain (docs/selectors.md): the code draws each presample
uniformly with replacement from the whole training set (`np.random.choice(N, large_batch)`), where
candidate batches here are consecutive slices of a shuffled pass; and the code's epoch is N / b
steps (3N samples scored), where an epoch here is one pass over the data, N / B steps.
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

    def __init__(
        self,
        score: str = "upper_bound",
        variance_reduction: bool = False,
        tau_th: float | None = None,
        tau_momentum: float = 0.9,
        **common,
    ):
        super().__init__(**common)
        if score not in SCORES:
            raise ConfigError(
                f"selector.score must be one of {SCORES} for selector=importance, got {score!r}"
            )
        if not 0.0 <= float(tau_momentum) < 1.0:
            raise ConfigError(f"selector.tau_momentum must be in [0, 1), got {tau_momentum}")
        self.score = score
        self.variance_reduction = bool(variance_reduction)
        self.tau_th = None if tau_th is None else float(tau_th)
        self.tau_momentum = float(tau_momentum)
        self.tau = 0.0  # the moving average of the estimated variance reduction

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

    def threshold(self, n: int) -> float:
        """Eq. 29: importance sampling pays off once tau > (B + 3b) / (3b)."""
        b = self.keep_count(n)
        return self.tau_th if self.tau_th is not None else (n + 3 * b) / (3 * b)

    def update_tau(self, scores: Tensor) -> None:
        self.tau = self.tau_momentum * self.tau + (1 - self.tau_momentum) * variance_reduction(
            scores
        )

    def choose(self, batch: Batch, view: BatchView):
        if self.variance_reduction and self.tau <= self.threshold(len(batch)):
            positions = self.uniform(len(batch), self.keep_count(len(batch)))
            self.update_tau(self.scores(batch, view)[positions.to(batch.y.device)])
            return positions, {"distinct_frac": len(positions) / len(batch), "tau": self.tau,
                               "importance_on": 0.0}  # fmt: skip
        scores = self.scores(batch, view)
        positions, weights = self.draw(scores)
        diagnostics = {"distinct_frac": len(positions) / len(batch)}
        if self.variance_reduction:
            self.update_tau(scores)
            diagnostics.update(tau=self.tau, importance_on=1.0)
        return positions, diagnostics, weights

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tau = float(state.get("tau", 0.0))


def variance_reduction(scores: Tensor) -> float:
    """1 / sqrt(1 - ||g - u||^2 / ||g||^2) for g = scores / sum(scores), u = 1 / n: the estimated
    factor by which importance sampling reduces the gradient variance (1 for uniform scores)."""
    scores = scores.double().cpu().clamp_min(0)
    if scores.sum() <= 0:
        return 1.0
    g = scores / scores.sum()
    u = 1.0 / len(g)
    return float(1.0 / torch.sqrt(1 - ((g - u) ** 2).sum() / (g**2).sum()))
