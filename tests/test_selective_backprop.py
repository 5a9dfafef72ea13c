"""Selective-Backprop against its authors' code (github.com/angelajiang/SelectiveBackprop at
7c419379c45a8d55e447dd81a57c1f37a39dcb27), transcribed independently in
`oracles/selective_backprop.py`: the keep probabilities, the first epoch on everything, and the
staging of selected samples into backward batches, checked on real runs of the trainer, resumed
ones included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TIME_KEYS
from oracles import selective_backprop as authors
from saln_exp.checkpoint import Checkpoints
from saln_exp.selectors.base import Selector
from saln_exp.selectors.selective_backprop import SelectiveBackprop
from saln_exp.train import run
from saln_exp.trainer import Trainer

SMALL = ("model=fcnet", "model.hidden=32", "dataset.image_size=8", "dataset.batch_size=32")


def selecting(**options) -> SelectiveBackprop:
    """A selector past its priming epoch (the calculator tests start selecting at once)."""
    return SelectiveBackprop(prime_epochs=0, **options)


# -- the keep probabilities ----------------------------------------------------------------------
def test_the_batch_joins_the_history_first_and_the_percentile_counts_strictly_lower_losses():
    """From the code's text by hand: history [1, 2, 3, 3] after the batch joins; 3 has two losses
    strictly below it of four (50%), not its tie-averaged rank."""
    p = selecting(beta=1.0).probabilities(torch.tensor([1.0, 2.0, 3.0, 3.0]))
    np.testing.assert_allclose(p.numpy(), [0.0, 0.25, 0.5, 0.5])


@pytest.mark.parametrize(
    "beta, history, sampling_min", [(1.0, 1024, 0.0), (3.0, 50, 0.0), (2.0, 7, 0.1), (1.0, 20, 0.0)]
)
def test_keep_probabilities_match_the_authors_calculator(beta, history, sampling_min):
    rng = np.random.default_rng(0)
    batches = [np.round(rng.exponential(size=32), 1) for _ in range(6)]  # rounding makes ties
    calculator = authors.RelativeProbabilityCalculator(sampling_min, history, beta)
    expected = np.concatenate([calculator.get_probability(b.tolist()) for b in batches])
    selector = selecting(beta=beta, history=history, sampling_min=sampling_min)
    ours = np.concatenate(
        [selector.probabilities(torch.tensor(b, dtype=torch.float64)).numpy() for b in batches]
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    assert len(selector.losses) == min(history, 6 * 32)


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_about_one_over_one_plus_beta_is_kept(beta):
    selector = selecting(beta=beta, seed=0)
    losses = torch.rand(20000, generator=torch.Generator().manual_seed(1))
    selector.probabilities(losses[:4000])  # warm the history, then measure
    p = torch.cat([selector.probabilities(chunk) for chunk in losses[4000:].split(128)])
    assert float(p.mean()) == pytest.approx(1 / (1 + beta), abs=0.02)


def test_each_sample_is_kept_with_its_probability():
    losses = torch.linspace(0.1, 2.0, 16)
    history = torch.linspace(0.0, 2.1, 64)  # a fixed history the batch joins
    reference = selecting(beta=1.0)
    reference.losses = history.clone()
    expected = reference.probabilities(losses).numpy()
    hits, trials = np.zeros(16), 3000
    view = type("View", (), {"losses": losses})()
    for seed in range(trials):
        selector = selecting(beta=1.0, seed=seed)
        selector.losses = history.clone()
        kept, _ = selector.choose(None, view)
        hits[kept.numpy()] += 1
    np.testing.assert_allclose(hits / trials, expected, atol=0.04)


def test_the_history_and_the_epoch_count_survive_a_checkpoint():
    a = SelectiveBackprop(beta=2.0, history=10, seed=4)
    a.epochs_started = 3
    a.probabilities(torch.arange(15.0))
    b = SelectiveBackprop(beta=2.0, history=10, seed=0)
    b.load_state_dict(a.state_dict())
    x = torch.tensor([3.0, 12.0, 0.5])
    assert b.epochs_started == 3 and not b.priming()
    torch.testing.assert_close(a.probabilities(x.clone()), b.probabilities(x.clone()))


def test_the_priming_epochs_keep_everything_and_leave_the_history_alone():
    selector = SelectiveBackprop(prime_epochs=2)
    batch = type("Batch", (), {"__len__": lambda self: 8})()
    view = type("View", (), {"losses": torch.rand(8)})()
    for epoch in range(3):
        selector.start_epoch()
        kept, _ = selector.choose(batch, view)
        primed = authors.primed(epoch, n_train=100, num_images_to_prime=2 * 100)
        assert selector.priming() == primed
        if primed:
            assert torch.equal(kept, torch.arange(8)) and len(selector.losses) == 0
    assert len(selector.losses) == 8  # fed from the first selecting epoch on


def test_a_negative_priming_is_refused():
    from saln_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="prime_epochs"):
        SelectiveBackprop(prime_epochs=-1)


# -- the staging, on real runs -------------------------------------------------------------------
def record_run(make_cfg, monkeypatch, *overrides):
    """Run the trainer; record each candidate batch's samples with their selected flags (in
    candidate order) and each optimizer step's samples, both with their epoch."""
    candidates, steps = [], []
    real_select, real_step = Selector.select, Trainer.train_step

    def select(self, batch, view, accumulating=False):
        selection = real_select(self, batch, view, accumulating)
        chosen = set(selection.positions.tolist())
        flags = [(int(i), j in chosen) for j, i in enumerate(batch.index.tolist())]
        candidates.append((self.epochs_started - 1, flags))
        return selection

    def train_step(self, kept):
        steps.append((self.progress.epoch, kept.index.tolist()))
        real_step(self, kept)

    monkeypatch.setattr(Selector, "select", select)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    run(make_cfg(*SMALL, "selector=selective_backprop", *overrides))
    monkeypatch.undo()
    return candidates, steps


def per_epoch(candidates, epochs):
    return [[flags for e, flags in candidates if e == epoch] for epoch in range(epochs)]


def test_backward_batches_are_the_authors_trainers_and_no_selected_sample_is_lost(
    make_cfg, tmp_path, monkeypatch
):
    candidates, steps = record_run(make_cfg, monkeypatch, "trainer.epochs=4")
    expected, leftover = authors.backward_batches(per_epoch(candidates, 4), batch_size=32)
    # the code never ends training, so what it still holds after the last epoch is ours to
    # train: one last step, so that no selected sample is lost
    if any(selected for _, selected in leftover):
        expected.append((3, [s for s, selected in leftover if selected]))
    assert steps == expected
    selected = sum(selected for _, flags in candidates for _, selected in flags)
    assert sum(len(samples) for _, samples in steps) == selected
    assert selected < sum(len(flags) for _, flags in candidates)  # it did select
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert rows[-1]["samples/backprop"] == selected and rows[-1]["select/staged"] == 0
    assert all(r["select/overflow"] == 0 for r in rows)


@pytest.mark.parametrize("candidates", [32, 80], ids=["candidate=batch", "candidate=2.5x"])
def test_every_step_but_an_epochs_last_is_exactly_batch_size(make_cfg, monkeypatch, candidates):
    candidate_batches, steps = record_run(
        make_cfg, monkeypatch, "trainer.epochs=3", f"selector.candidate_batch_size={candidates}"
    )
    for epoch in range(3):
        sizes = [len(samples) for e, samples in steps if e == epoch]
        assert all(size == 32 for size in sizes[:-1]) and 0 < sizes[-1] <= 32
    selected = sum(s for _, flags in candidate_batches for _, s in flags)
    assert sum(len(samples) for _, samples in steps) == selected


def test_the_first_epoch_trains_on_everything_then_selection_starts(make_cfg, tmp_path):
    run(make_cfg(*SMALL, "selector=selective_backprop", "trainer.epochs=2"))
    first, second = (json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open())
    assert first["select/kept_frac"] == 1.0 and first["select/keep_prob_mean"] == 1.0
    assert first["samples/backprop"] == first["samples/seen"]
    assert second["select/kept_frac"] < 0.9


def test_a_resumed_run_with_staged_samples_matches_an_uninterrupted_one(
    make_cfg, tmp_path, monkeypatch
):
    overrides = (*SMALL, "selector=selective_backprop", "trainer.epochs=3",
                 "trainer.checkpoint_every_steps=3")  # fmt: skip
    straight = make_cfg(*overrides)
    straight.paths.output_dir = str(tmp_path / "straight")
    run(straight)
    real_save, real_step = Trainer.save_checkpoint, Trainer.train_step
    staged_at_save = []  # did the latest checkpoint fall mid-epoch with samples staged?

    def save(self):
        real_save(self)
        staged_at_save.append(self.progress.mid_epoch and self.sel.staged > 0)

    def dying(self, kept):  # killed at the first step after such a checkpoint
        if self.progress.epoch >= 1 and staged_at_save and staged_at_save[-1]:
            raise KeyboardInterrupt("simulated kill")
        real_step(self, kept)

    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*overrides))
    monkeypatch.undo()
    state = Checkpoints(tmp_path / "run").load()
    assert state["progress"]["order"] is not None  # a mid-epoch checkpoint ...
    staged = state["selection"]["accumulator"]["pending"]
    assert sum(len(y) for _, _, y in staged)  # ... with staged samples
    run(make_cfg(*overrides))

    def metrics(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(r).items() if k not in TIME_KEYS} for r in lines]

    assert metrics("run") == metrics("straight")


def test_in_the_selection_api_the_sampler_brings_the_first_epoch_on_everything():
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from saln_exp import selection

    g = torch.Generator().manual_seed(0)
    data = selection.Indexed(
        TensorDataset(torch.randn(96, 5, generator=g), torch.randint(0, 3, (96,), generator=g))
    )
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    sel = selection.make("selective_backprop", batch_size=16)
    loader = DataLoader(data, batch_size=16, sampler=sel.sampler(len(data)))
    kept = [[len(sel.select(model, x, y, i).positions) for x, y, i in loader] for _ in range(2)]
    assert sum(kept[0]) == 96 and sum(kept[1]) < 96
    plain = selection.make("selective_backprop", batch_size=16)  # no epochs: selects at once
    assert (
        sum(
            len(plain.select(model, x, y, i).positions)
            for x, y, i in DataLoader(data, batch_size=16)
        )
        < 96
    )
