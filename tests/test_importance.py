"""Importance sampling (Katharopoulos and Fleuret 2018) from the paper's text: draws with
replacement in proportion to the score, weights 1 / (B p), an unbiased gradient, and the paper's
gradient-norm upper bound ||softmax(z) - onehot(y)||."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saln_exp.selectors.base import Batch, BatchView
from saln_exp.selectors.importance import ImportanceSampling


def test_draws_follow_the_scores_and_weights_are_one_over_b_p():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 10.0])
    p = scores / scores.sum()
    counts, trials = np.zeros(6), 4000
    for seed in range(trials):
        sel = ImportanceSampling(filter_ratio=0.5, seed=seed)  # b = 3 draws from B = 6
        positions, weights = sel.draw(scores)
        b, k = 3, len(positions)
        # undo the multiplicity scaling: weight = (k / b) * c_i / (B p_i)
        c = (weights * b / k * 6 * p[positions]).round()
        assert torch.all(c >= 1) and int(c.sum()) == b
        counts[positions.numpy()] += c.numpy()
    np.testing.assert_allclose(counts / (trials * 3), p.numpy(), atol=0.01)
    assert counts[4] == 0  # a zero score is never drawn


def test_the_weighted_mean_is_an_unbiased_estimate_of_the_batch_gradient():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 4, generator=gen), torch.randint(0, 3, (24,), generator=gen)
    weight = torch.randn(3, 4, generator=gen, requires_grad=True)

    def grad(index, w):  # the trainer's loss: mean over the kept samples of w * loss
        loss = (F.cross_entropy(x[index] @ weight.T, y[index], reduction="none") * w).mean()
        return torch.autograd.grad(loss, weight)[0]

    full = grad(torch.arange(24), torch.ones(24))
    logits = (x @ weight.T).detach()
    scores = (logits.softmax(1) - F.one_hot(y, 3).float()).norm(dim=1)
    total, trials = torch.zeros_like(full), 4000
    for seed in range(trials):
        positions, w = ImportanceSampling(filter_ratio=0.75, seed=seed).draw(scores)
        total += grad(positions, w)
    torch.testing.assert_close(total / trials, full, atol=0.03 * float(full.abs().max()), rtol=0)


def test_the_score_is_the_gradient_norm_with_respect_to_the_logits():
    from omegaconf import OmegaConf

    from saln_exp.models import build_model

    model = build_model(OmegaConf.create({"name": "fcnet", "hidden": 8}), (1, 4, 4), 4).eval()
    batch = Batch(torch.arange(8), torch.randn(8, 1, 4, 4), torch.randint(0, 4, (8,)))
    ours = ImportanceSampling().scores(batch, BatchView(batch, model))
    logits = model(batch.x).detach().requires_grad_(True)
    per_sample = [torch.autograd.grad(F.cross_entropy(logits[i : i + 1], batch.y[i : i + 1]), logits)[0][i]
                  for i in range(8)]  # fmt: skip
    torch.testing.assert_close(ours, torch.stack(per_sample).norm(dim=1))
    assert torch.equal(ImportanceSampling(score="loss").scores(batch, BatchView(batch, model)),
                       BatchView(batch, model).losses.float())  # fmt: skip


def test_an_unknown_score_is_one_clear_error():
    from saln_exp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"selector\.score must be one of"):
        ImportanceSampling(score="gradient")


# -- the variance-reduction switch (Algorithm 1) ------------------------------------------------------
class FixedScores(ImportanceSampling):
    """The switch's logic on scores given by the test, not by a model."""

    def __init__(self, per_batch, **options):
        super().__init__(**options)
        self.per_batch = iter(per_batch)

    def scores(self, batch, view):
        return next(self.per_batch)


def paper_tau(history: list[np.ndarray], momentum: float = 0.9) -> float:
    """tau from the paper's text, with the algebra done by hand: for g = s / sum(s) and u = 1/n,
    ||g - u||^2 = ||g||^2 - 1/n, so 1 / sqrt(1 - ||g - u||^2 / ||g||^2) = sqrt(n ||g||^2)."""
    tau = 0.0
    for s in history:
        g = s / s.sum()
        tau = momentum * tau + (1 - momentum) * np.sqrt(len(g) * (g**2).sum())
    return tau


def test_the_switch_trains_uniformly_until_tau_passes_eq_29s_threshold():
    # filter_ratio 0.75: B = 64, b = 16, tau_th = (64 + 48) / 48 = 2.33. Four samples carry the
    # batch's gradient; a uniform step sees one of them about two times in three, and tau, an
    # average of sqrt(b ||g||^2) over the trained samples, climbs past tau_th
    n, b = 64, 16
    skewed = torch.tensor([1000.0] * 4 + [1.0] * (n - 4))
    sel = FixedScores([skewed] * 60, filter_ratio=0.75, variance_reduction=True, seed=0)
    batch = Batch(torch.arange(n), torch.zeros(n, 1), torch.zeros(n, dtype=torch.long))
    assert sel.threshold(n) == pytest.approx(112 / 48)
    seen, modes = [], []
    for _ in range(60):
        before = sel.tau
        selection = sel.select(batch, None)
        uniform = selection.weights is None
        modes.append(uniform)
        assert uniform == (before <= 112 / 48)  # the decision uses tau before this batch
        if uniform:  # b distinct samples, unweighted; tau learns from their scores only
            assert len(selection.positions) == b
            seen.append(skewed[selection.positions].numpy())
        else:  # the presample's B scores
            seen.append(skewed.numpy())
        assert sel.tau == pytest.approx(paper_tau(seen))
    assert modes[0] and not modes[-1]  # starts uniform (tau = 0), ends importance-sampling


def test_uniform_scores_never_switch_it_on():
    n = 16
    flat = torch.ones(n)
    sel = FixedScores([flat] * 100, filter_ratio=0.75, variance_reduction=True, seed=0)
    batch = Batch(torch.arange(n), torch.zeros(n, 1), torch.zeros(n, dtype=torch.long))
    assert all(sel.select(batch, None).weights is None for _ in range(100))
    assert sel.tau == pytest.approx(1 - 0.9**100)  # tau -> 1: no variance to reduce


def test_tau_is_part_of_the_selector_state():
    sel = ImportanceSampling(variance_reduction=True)
    sel.tau = 1.7
    other = ImportanceSampling(variance_reduction=True)
    other.load_state_dict(sel.state_dict())
    assert other.tau == 1.7


@pytest.mark.parametrize("b", [1, 16, 128, 341, 1024])
def test_the_default_presamples_three_batches_as_the_authors_code(make_cfg, b):
    """The authors' ImportanceTraining(presample=3.0): B = 3b scored, b trained; and tau_th is
    their (B + 3b) / (3b) = 2."""
    from saln_exp.selectors import build_selector

    selector = build_selector(make_cfg("selector=importance").selector, seed=0)
    assert selector.keep_count(3 * b) == b
    assert selector.threshold(3 * b) == pytest.approx(2.0)
