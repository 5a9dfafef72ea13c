"""Selective-Backprop against an oracle built on scipy's own percentile and a deque, as the
authors' RelativeProbabilityCalculator does it."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
from scipy import stats

from saln_exp.selectors.selective_backprop import SelectiveBackprop


def oracle_probabilities(batches, beta, history, sampling_min):
    window, out = collections.deque(maxlen=history), []
    for losses in batches:
        for loss in losses:
            window.append(loss)
            p = math.pow(stats.percentileofscore(list(window), loss, kind="rank") / 100.0, beta)
            out.append(max(sampling_min, p))
    return np.array(out)


@pytest.mark.parametrize(
    "beta, history, sampling_min", [(1.0, 1024, 0.0), (3.0, 50, 0.0), (2.0, 7, 0.1)]
)
def test_keep_probabilities_match_the_authors_calculator(beta, history, sampling_min):
    rng = np.random.default_rng(0)
    batches = [np.round(rng.exponential(size=32), 1) for _ in range(6)]  # rounding makes ties
    selector = SelectiveBackprop(beta=beta, history=history, sampling_min=sampling_min)
    ours = np.concatenate([selector.probabilities(torch.tensor(b)).numpy() for b in batches])
    np.testing.assert_allclose(
        ours, oracle_probabilities(batches, beta, history, sampling_min), atol=1e-6
    )
    assert len(selector.losses) == min(history, 6 * 32)


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_about_one_over_one_plus_beta_is_kept(beta):
    selector = SelectiveBackprop(beta=beta, seed=0)
    losses = torch.rand(20000, generator=torch.Generator().manual_seed(1))
    p = selector.probabilities(losses[:4000])  # warm the history, then measure
    p = selector.probabilities(losses[4000:])
    assert float(p.mean()) == pytest.approx(1 / (1 + beta), abs=0.02)


def test_each_sample_is_kept_with_its_probability():
    losses = torch.linspace(0.1, 2.0, 16)
    hits, trials = np.zeros(16), 3000
    reference = SelectiveBackprop(beta=1.0)
    reference.losses = torch.linspace(0.0, 2.1, 64)  # a fixed history
    expected = reference.probabilities(losses).numpy()
    view = type("View", (), {"losses": losses})()
    for seed in range(trials):
        selector = SelectiveBackprop(beta=1.0, seed=seed)
        selector.losses = torch.linspace(0.0, 2.1, 64)
        kept, _ = selector.choose(None, view)
        hits[kept.numpy()] += 1
    np.testing.assert_allclose(hits / trials, expected, atol=0.04)


def test_the_history_survives_a_checkpoint():
    a = SelectiveBackprop(beta=2.0, history=10, seed=4)
    a.probabilities(torch.arange(15.0))
    b = SelectiveBackprop(beta=2.0, history=10, seed=0)
    b.load_state_dict(a.state_dict())
    x = torch.tensor([3.0, 12.0, 0.5])
    torch.testing.assert_close(a.probabilities(x.clone()), b.probabilities(x.clone()))
