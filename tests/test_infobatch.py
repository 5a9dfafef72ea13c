"""InfoBatch and the per-sample weights it trains with, checked against the paper's text and its
authors' code (transcribed here independently): which samples an epoch keeps, the 1 / (1 - r)
rescaling, the annealing epochs, an unbiased expected gradient, and weights that survive
accumulation and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TIME_KEYS
from oracles.infobatch import pruning_epochs as oracle_pruning_epochs
from saln_exp.selectors import SELECTORS, Batch
from saln_exp.selectors.accumulate import Accumulator
from saln_exp.selectors.base import Selector
from saln_exp.selectors.infobatch import InfoBatch
from saln_exp.train import run
from saln_exp.trainer import Trainer

SMALL = ("model=fcnet", "model.hidden=32", "dataset.image_size=8", "dataset.batch_size=32")


class FakeSplit:
    def __init__(self, n: int):
        self.indices = torch.arange(n)

    def __len__(self) -> int:
        return len(self.indices)


class FakeContext:
    """What `epoch_positions` reads: the train split, the dataset-index space, the epoch count."""

    def __init__(self, n: int, epochs: int):
        self.data = type(
            "Data", (), {"train": FakeSplit(n), "noisy": torch.zeros(n, dtype=torch.bool)}
        )()
        self.epochs = epochs
        self.device = torch.device("cpu")


def infobatch_after_one_epoch(
    scores: np.ndarray, r: float, epochs: int = 10, seed: int = 0
) -> InfoBatch:
    selector = InfoBatch(filter_ratio=r, seed=seed)
    ctx = FakeContext(len(scores), epochs)
    selector.epoch_positions(ctx)  # epoch 0: every score is 3.0, nothing is below the mean
    selector.observe_training_losses(torch.arange(len(scores)), torch.tensor(scores))
    return selector


def test_the_first_epoch_prunes_nothing_and_weighs_every_sample_one():
    selector = InfoBatch(filter_ratio=0.5)
    positions = selector.epoch_positions(FakeContext(20, 10))
    assert torch.equal(positions, torch.arange(20)) and torch.all(selector.weights == 1)


@pytest.mark.parametrize("r", [0.3, 0.5, 0.8])
def test_only_below_mean_samples_are_pruned_and_the_kept_ones_weigh_one_over_keep_ratio(r):
    rng = np.random.default_rng(1)
    scores = rng.gamma(2.0, 0.5, size=200)
    selector = infobatch_after_one_epoch(scores, r)
    positions = selector.epoch_positions(FakeContext(200, 10)).numpy()
    low = np.flatnonzero(scores < scores.mean())  # the paper's "well learned": loss below the mean
    high = np.flatnonzero(scores >= scores.mean())
    keep_ratio = 1 - r
    kept_low = np.intersect1d(positions, low)
    assert set(high) <= set(positions)  # never prunes a sample at or above the mean
    assert len(kept_low) == int(keep_ratio * len(low))  # the code's int(keep_ratio * count)
    assert len(np.unique(positions)) == len(positions) == len(high) + len(kept_low)
    w = selector.weights.numpy()
    np.testing.assert_allclose(w[kept_low], 1 / keep_ratio)
    np.testing.assert_array_equal(w[np.setdiff1d(np.arange(200), kept_low)], 1.0)


def test_the_kept_fraction_is_clipped_at_a_tenth_as_in_the_code():
    assert InfoBatch(filter_ratio=0.95).keep_ratio == pytest.approx(0.1)


def test_every_below_mean_sample_is_kept_with_probability_keep_ratio():
    scores = np.r_[np.zeros(10), np.ones(10)]  # 10 below the mean (0.5), 10 above
    counts = np.zeros(20)
    trials = 2000
    for seed in range(trials):
        selector = infobatch_after_one_epoch(scores, r=0.5, seed=seed)
        counts[selector.epoch_positions(FakeContext(20, 10)).numpy()] += 1
    np.testing.assert_array_equal(counts[10:], trials)
    np.testing.assert_allclose(counts[:10] / trials, 0.5, atol=0.04)  # 5 of 10, uniformly


def test_annealing_trains_the_last_epochs_on_everything_unweighted():
    scores = np.r_[np.zeros(10), np.ones(10)]
    selector = infobatch_after_one_epoch(scores, r=0.5, epochs=4)  # prune epochs 0..2 (3 <= 3.5)
    ctx = FakeContext(20, 4)
    assert [len(selector.epoch_positions(ctx)) for _ in range(2)] == [15, 15]
    last = selector.epoch_positions(ctx)  # epoch 3: 3 + 1 > 3.5, annealing
    assert torch.equal(last, torch.arange(20)) and torch.all(selector.weights == 1)


@pytest.mark.parametrize(
    "epochs, delta", [(4, 0.875), (8, 0.875), (200, 0.875), (10, 0.5), (3, 1.0), (7, 0.3)]
)
def test_the_pruned_epochs_are_the_authors_samplers(epochs, delta):
    """The code's IBSampler counter is 1 when the first epoch starts: it prunes the first
    delta * epochs epochs, as the paper says (175 of 200), not one more."""
    selector, pruned = InfoBatch(filter_ratio=0.5, delta=delta), []
    real_prune = selector.prune
    selector.prune = lambda scores: pruned.append(selector.epoch - 1) or real_prune(scores)
    ctx = FakeContext(20, epochs)
    for _ in range(epochs):
        selector.epoch_positions(ctx)
    flags = [epoch in pruned for epoch in range(epochs)]
    assert flags == oracle_pruning_epochs(epochs, delta)
    assert sum(flags) == math.floor(delta * epochs)


def test_the_expected_weighted_gradient_is_the_full_gradient_on_a_linear_model():
    """Eq. 3: with the 1 / (1 - r) rescaling, E[sum over kept of w_i * grad l_i] = sum_i grad l_i
    (exact when (1 - r) times the number of below-mean samples is an integer)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    weight = torch.randn(3, 5, generator=gen, requires_grad=True)

    def grad(index: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        loss = (
            torch.nn.functional.cross_entropy(x[index] @ weight.T, y[index], reduction="none") * w
        ).sum()
        return torch.autograd.grad(loss, weight)[0]

    losses = torch.nn.functional.cross_entropy(x @ weight.T, y, reduction="none").detach()
    assert int((losses < losses.mean()).sum()) % 2 == 0  # r = 0.5 keeps exactly half of them
    full = grad(torch.arange(40), torch.ones(40))
    total, trials = torch.zeros_like(full), 3000
    for seed in range(trials):
        selector = infobatch_after_one_epoch(losses.numpy(), r=0.5, seed=seed)
        kept = selector.epoch_positions(FakeContext(40, 10))
        total += grad(kept, selector.weights[kept])
    torch.testing.assert_close(total / trials, full, atol=0.05 * float(full.abs().max()), rtol=0)
    unweighted = grad(kept, torch.ones(len(kept)))
    assert not torch.allclose(
        unweighted, full, atol=0.05 * float(full.abs().max())
    )  # the weights matter


# -------------------------------------------------------------------- weights in the trainer


class ConstantWeight(Selector):
    """Keeps every sample with weight 2: with plain SGD this must equal twice the learning rate."""

    name = "constant_weight"

    def choose(self, batch, view):
        return torch.arange(len(batch)), {}, torch.full((len(batch),), 2.0)


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def test_the_training_loss_is_the_weighted_mean_over_the_kept_samples(
    make_cfg, tmp_path, monkeypatch
):
    monkeypatch.setitem(SELECTORS, "constant_weight", ConstantWeight)
    plain = ("optimizer.momentum=0", "optimizer.weight_decay=0", "trainer.epochs=2", *SMALL)
    weighted = make_cfg(*plain, "selector=none", "optimizer.lr=0.05")
    weighted.selector.name = "constant_weight"
    weighted.paths.output_dir = str(tmp_path / "weighted")
    run(weighted)
    doubled = make_cfg(*plain, "selector=none", "optimizer.lr=0.1")
    doubled.paths.output_dir = str(tmp_path / "doubled")
    run(doubled)
    for a, b in zip(metrics(tmp_path / "weighted"), metrics(tmp_path / "doubled"), strict=True):
        assert a["test/acc"] == b["test/acc"]
        assert a["train/loss_mean"] == pytest.approx(b["train/loss_mean"], rel=1e-5)
        # the logged batch loss is the plain cross-entropy, not the weighted one
        assert a["train_batch/loss"] == pytest.approx(b["train_batch/loss"], rel=1e-5)


def test_weights_travel_through_accumulation_and_its_checkpoint():
    acc = Accumulator(5, InfoBatch.overflow_rule)
    one = Batch(
        torch.arange(3),
        torch.zeros(3, 2),
        torch.zeros(3, dtype=torch.long),
        torch.tensor([2.0, 2.0, 2.0]),
    )
    two = Batch(
        torch.arange(3, 6), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    )  # unweighted
    acc.add(one)
    assert acc.ready() is None
    restored = Accumulator(5, InfoBatch.overflow_rule)
    restored.load_state_dict(acc.state_dict(), torch.device("cpu"))
    restored.add(two)
    full = restored.ready()
    assert torch.equal(full.index, torch.arange(5))
    assert torch.equal(full.w, torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0]))


def test_infobatch_resumed_mid_epoch_matches_an_uninterrupted_run(make_cfg, tmp_path, monkeypatch):
    overrides = (
        *SMALL,
        "selector=infobatch",
        "trainer.epochs=4",
        "trainer.checkpoint_every_steps=5",
    )
    straight = make_cfg(*overrides)
    straight.paths.output_dir = str(tmp_path / "straight")
    run(straight)
    real = Trainer.train_step

    def dying(self, batch):
        if self.progress.steps == 70:  # in epoch 3, after pruning started
            raise KeyboardInterrupt("simulated kill")
        real(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*overrides))
    monkeypatch.undo()
    run(make_cfg(*overrides))
    resumed, reference = metrics(tmp_path / "run"), metrics(tmp_path / "straight")
    assert resumed == reference
    assert (
        reference[0]["select/epoch_kept_frac"] == 1.0
        and reference[1]["select/epoch_kept_frac"] < 1.0
    )


# -------------------------------------------------------------------- RS2 (same epoch-level hook)


@pytest.mark.parametrize("n, f, fraction", [(20, 0.75, 0.25), (23, 0.7, 0.3), (10, 0.0, 1.0)])
def test_rs2_draws_fresh_subsets_without_replacement_until_every_sample_was_used(n, f, fraction):
    from saln_exp.selectors.rs2 import RS2

    selector, ctx = RS2(filter_ratio=f, seed=3), FakeContext(n, 100)
    k = round(n * fraction)  # the authors' coreset_size = round(n_train * fraction)
    counts = np.zeros(n, dtype=int)
    for epoch in range(12):
        positions = selector.epoch_positions(ctx).numpy()
        assert len(positions) == k and len(np.unique(positions)) == k  # a subset, no repeats
        counts[positions] += 1
        assert counts.max() - counts.min() <= 1  # nobody twice before everybody once
        if (epoch + 1) * k % n == 0:
            assert counts.max() == counts.min()  # a whole number of passes: all used equally
    state = selector.state_dict()
    again = RS2(filter_ratio=f, seed=99)
    again.load_state_dict(state)
    assert torch.equal(again.epoch_positions(ctx), selector.epoch_positions(ctx))  # resumable


def test_rs2_keeps_the_authors_rounded_count():
    """round(60,000 * 0.1) = 6,000 as the code's coreset_size, not int(60,000 * (1 - 0.9)) = 5,999."""
    from saln_exp.selectors.rs2 import RS2

    assert len(RS2(filter_ratio=0.9).epoch_positions(FakeContext(60000, 10))) == 6000
