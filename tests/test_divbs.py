"""DivBS against a transcription of its greedy step from the paper's text: the probability of a
chosen set equals the one computed by hand from |correlation with the residual| and Gram-Schmidt."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saln_exp.selectors.divbs import DivBS, last_layer_gradients


def oracle_set_probabilities(g: np.ndarray, k: int) -> dict[frozenset, float]:
    """P(chosen set) by enumerating every ordered sequence of picks."""
    out: dict[frozenset, float] = {}
    mean = g.mean(0)
    for order in itertools.permutations(range(len(g)), k):
        prob, residual, basis = 1.0, mean.copy(), []
        for step, i in enumerate(order):
            corr = np.abs(g @ residual)
            corr[list(order[:step])] = 0
            prob *= corr[i] / corr.sum()
            d = g[i] - sum((u @ g[i]) * u for u in basis)
            d = d / np.linalg.norm(d)
            basis.append(d)
            residual = residual - (d @ residual) * d
        out[frozenset(order)] = out.get(frozenset(order), 0.0) + prob
    return out


def test_chosen_sets_follow_the_greedy_correlation_rule():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(5, 8))
    expected = oracle_set_probabilities(g, 2)
    counts: dict[frozenset, int] = {}
    trials = 6000
    for seed in range(trials):
        chosen = DivBS(filter_ratio=0.6, seed=seed).greedy(torch.tensor(g, dtype=torch.float64), 2)
        counts[frozenset(chosen.tolist())] = counts.get(frozenset(chosen.tolist()), 0) + 1
    for chosen_set, p in expected.items():
        assert counts.get(chosen_set, 0) / trials == pytest.approx(p, abs=0.02)


def test_exactly_k_distinct_and_a_uniform_fill_when_nothing_correlates():
    g = torch.zeros(10, 4)
    g[:, 0] = 1.0  # every gradient the same direction: one pick spans the residual
    chosen = DivBS(filter_ratio=0.5, seed=1).greedy(g, 5)
    assert len(chosen) == 5 and len(set(chosen.tolist())) == 5


def test_the_features_are_the_last_layer_gradient():
    gen = torch.Generator().manual_seed(0)
    h, y = torch.randn(6, 3, generator=gen), torch.randint(0, 4, (6,), generator=gen)
    w = torch.randn(4, 3, generator=gen, requires_grad=True)
    ours = last_layer_gradients((h @ w.T).detach(), y, h)
    for i in range(6):
        (grad,) = torch.autograd.grad(F.cross_entropy((h[i : i + 1] @ w.T), y[i : i + 1]), w)
        torch.testing.assert_close(ours[i], grad.flatten())


def test_divbs_keeps_the_authors_int_n_times_ratio():
    """The code's `int(inputs.shape[0] * ratio)` with ratio 0.1 keeps 32 of a batch of 320 (its
    CIFAR configs); float's int(320 * (1 - 0.9)) would keep 31."""
    assert int(320 * 0.1) == 32 and int(320 * (1 - 0.9)) == 31
    selector = DivBS(filter_ratio=0.9, seed=0)
    assert selector.keep_count(320) == 32
    g = torch.randn(320, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert len(set(selector.greedy(g, selector.keep_count(320)).tolist())) == 32
