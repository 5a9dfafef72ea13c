"""The public selection API (saln_exp/selection.py): every selector inside a plain PyTorch loop
around a plain `nn.Sequential` CNN, and the same choices as the runner's own selector calls."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from saln_exp import PROJECT_ROOT, selection
from saln_exp.models.fcnet import FCNet
from saln_exp.selectors import SELECTORS, Batch, BatchView, Selector, ViewSources
from saln_exp.selectors.infobatch import INITIAL_SCORE

CLASSES, SIDE = 4, 8


def blobs(n: int = 256, seed: int = 0) -> TensorDataset:
    """Noisy copies of one random prototype image per class: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(CLASSES, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return TensorDataset(prototypes[y] + 0.7 * torch.randn(n, 1, SIDE, SIDE, generator=g), y)


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * (SIDE // 2) ** 2, 32), nn.ReLU(), nn.Linear(32, CLASSES),
    )  # fmt: skip


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def options_for(name: str) -> dict:
    """What a selector needs besides its YAML defaults in a test loop."""
    if name in ("rho", "jest"):
        holdout = DataLoader(selection.Indexed(blobs(128, seed=1)), batch_size=32, shuffle=True)
        return {"reference": selection.train_reference(cnn(seed=1), holdout, epochs=2)}
    if name == "saln_paper":  # frozen-backbone features by dataset index (random stand-ins)
        return {"pretrained_features": torch.randn(256, 16, generator=torch.Generator().manual_seed(0))}  # fmt: skip
    return {}


def train(sel: selection.BatchSelector, model: nn.Module, loader, epochs: int) -> dict:
    """The loop docs/own-loop.md prints, with the API's invariants checked at every batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen = {"steps": 0, "weights": [], "trained": 0}
    for _ in range(epochs):
        for x, y, index in loader:
            kept = sel.select(model, x, y, index)
            assert len(kept.x) == len(kept.y) == len(kept.index) == len(kept.weights)
            assert kept.weights.dtype.is_floating_point
            positions = kept.positions
            assert len(torch.unique(positions)) == len(positions)
            assert ((positions >= 0) & (positions < len(y))).all()
            if not sel.stages:  # the kept samples are those of this batch, weighted as chosen
                assert torch.equal(kept.x, x[positions]) and torch.equal(
                    kept.index, index[positions]
                )
                chosen = kept.selection.weights
                expected = torch.ones(len(positions)) if chosen is None else chosen
                assert torch.equal(kept.weights, expected)
            if not kept:
                continue
            losses = F.cross_entropy(model(kept.x), kept.y, reduction="none")
            (losses * kept.weights).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            sel.update(kept.index, losses)
            seen["steps"] += 1
            seen["trained"] += len(kept)
            seen["weights"].append(kept.weights)
    return seen


def per_batch_names() -> list[str]:
    return [
        name for name in selection.available()
        if SELECTORS[selection.defaults(name)["name"]].epoch_positions is Selector.epoch_positions
    ]  # fmt: skip


@pytest.mark.parametrize("name", per_batch_names())
def test_every_per_batch_selector_trains_a_plain_sequential_cnn(name):
    data = blobs()
    model = cnn()
    sel = selection.make(name, **options_for(name))
    loader = DataLoader(selection.Indexed(data), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    before = accuracy(model, data)
    seen = train(sel, model, loader, epochs=4)
    assert seen["steps"] > 0
    if sel.stages:  # every step has exactly the step's batch size
        assert seen["trained"] == 32 * seen["steps"]
    assert accuracy(model, data) > before + 0.2, (before, accuracy(model, data))


def test_importance_weights_reach_the_loss():
    """A weighted selector's weights are what the loop multiplies the losses with."""
    sel = selection.make("importance")
    seen = train(sel, cnn(), DataLoader(selection.Indexed(blobs()), batch_size=32), epochs=1)
    weights = torch.cat(seen["weights"])
    assert not torch.allclose(weights, torch.ones_like(weights))


# -- epoch-level selectors: the sampler ------------------------------------------------------------
def epoch_loader(sel, data, model, epochs):
    sampler = sel.sampler(len(data), epochs=epochs, model=model,
                          eval_loader=DataLoader(selection.Indexed(data), batch_size=128))  # fmt: skip
    return sampler, DataLoader(selection.Indexed(data), batch_size=32, sampler=sampler)


def test_rs2_trains_each_epoch_on_a_fresh_tenth_through_its_sampler():
    data, model = blobs(), cnn()
    sel = selection.make("rs2")
    sampler, loader = epoch_loader(sel, data, model, epochs=10)
    epochs = []
    for _ in range(10):
        assert len(loader) == -(-len(sampler) // 32)  # len() describes the epoch iterated next
        epochs.append([int(i) for _, _, index in loader for i in index])
    assert {len(e) for e in epochs} == {round(256 * 0.1)}  # the authors' round(N r)
    assert all(len(set(e)) == len(e) for e in epochs)
    used = [i for e in epochs for i in e]
    assert max(used.count(i) for i in range(256)) - min(used.count(i) for i in range(256)) <= 1


def test_infobatch_prunes_well_learned_samples_from_the_losses_it_is_updated_with():
    data, model = blobs(), cnn()
    sel = selection.make("infobatch", delta=0.5)  # epochs 0-2 prune, epoch 3 anneals
    epochs = 4
    sampler, loader = epoch_loader(sel, data, model, epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sizes, upweighted = [], 0
    for _ in range(epochs):
        sizes.append(len(sampler))
        for x, y, index in loader:
            kept = sel.select(model, x, y, index)
            losses = F.cross_entropy(model(kept.x), kept.y, reduction="none")
            (losses * kept.weights).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            sel.update(kept.index, losses)
            upweighted += int((kept.weights == 2.0).sum())
    scores = sel.selector.scores
    assert (scores != INITIAL_SCORE).all()  # every sample's score is its last training loss
    assert sizes[0] == len(data) and min(sizes[1:3]) < len(data)  # pruned while not annealing
    assert sizes[-1] == len(data)  # annealing: the last epoch (> delta * epochs) trains on all
    assert upweighted > 0  # kept well-learned samples weigh 1 / (1 - 0.5)


@pytest.mark.parametrize("name", ["accuracy_epoch", "accuracy_epoch_batch"])
def test_epochwise_accuracy_trains_each_epoch_on_the_samples_misclassified_at_its_start(name):
    data, model = blobs(), cnn()
    sel = selection.make(name)
    _, loader = epoch_loader(sel, data, model, epochs=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        x_all, y_all = data.tensors
        with torch.no_grad():
            wrong = set(torch.nonzero(model(x_all).argmax(1) != y_all).flatten().tolist())
        order = []
        for x, y, index in loader:
            order += index.tolist()
            kept = sel.select(model, x, y, index)
            if kept:
                loss = (
                    F.cross_entropy(model(kept.x), kept.y, reduction="none") * kept.weights
                ).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        assert set(order) == wrong and len(order) == len(wrong)


def test_an_epoch_level_selector_without_its_sampler_is_refused():
    sel = selection.make("infobatch")
    x, y = blobs().tensors
    with pytest.raises(ValueError, match="sampler"):
        sel.select(cnn(), x[:8], y[:8], torch.arange(8))


def test_a_missing_sampler_argument_is_named():
    sel = selection.make("infobatch")
    with pytest.raises(ValueError, match="epochs="):
        len(sel.sampler(256))
    sel = selection.make("accuracy_epoch")
    with pytest.raises(ValueError, match="eval_loader"):
        len(sel.sampler(256, model=cnn()))


# -- the same choices as the runner ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["topk_loss", "uniform", "saln", "divbs", "importance", "jest",
                                  "selective_backprop", "loss_qsplit", "soft_accuracy"])  # fmt: skip
def test_a_plain_model_gets_the_runner_models_choices(name):
    """An nn.Sequential through the API chooses what the runner's call chooses for the FCNet with
    the same weights: its logits are the model's output, its features the last Linear's input."""
    fcnet = FCNet(1, CLASSES, SIDE, hidden=32)
    plain = nn.Sequential(nn.Flatten(), fcnet.hidden, nn.ReLU(), fcnet.classifier)
    x, y = blobs(64).tensors
    index = torch.arange(100, 164)
    reference = torch.rand(64)
    options = {"features": "learner"} if name == "saln" else {}
    extra = {"reference": lambda i: reference} if name == "jest" else {}
    kept = selection.make(name, seed=3, **options, **extra).select(plain, x, y, index)
    settings = {k: v for k, v in selection.defaults(name).items() if k != "reference"}
    runner = SELECTORS[settings.pop("name")](**{**settings, **options, "seed": 3})
    batch = Batch(index, x, y)
    sources = ViewSources(reference_losses=lambda b: reference)
    chosen = runner.select(batch, BatchView(batch, fcnet, sources), accumulating=runner.accumulate)
    assert torch.equal(kept.positions, chosen.positions)
    if chosen.weights is not None and not runner.accumulate:
        assert torch.equal(kept.weights, chosen.weights)


class LogProbabilities(nn.Module):
    """Its output is log-softmax of the last Linear's output: which features are penultimate is
    not for the API to guess."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 16), nn.ReLU())
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        return self.fc(self.body(x)).log_softmax(1)


def test_a_model_with_ambiguous_features_gets_one_error_naming_head():
    x, y = blobs(32).tensors
    model = LogProbabilities()
    with pytest.raises(ValueError, match=r"head=.*forward_features"):
        selection.make("divbs").select(model, x, y, torch.arange(32))
    selection.make("topk_loss").select(model, x, y, torch.arange(32))  # no features: no error
    kept = selection.make("divbs", head=model.fc).select(model, x, y, torch.arange(32))
    assert len(kept) == int(32 * (1 - 0.9))


def test_a_staging_selector_returns_nothing_until_a_full_batch_is_staged():
    """accuracy (ASSIST Alg. 10): kept samples pile up over candidate batches; each step trains
    exactly batch_size of them, staged from earlier batches too."""
    x, y = blobs(64).tensors
    model = cnn()
    sel = selection.make("accuracy", batch_size=48)
    first = sel.select(model, x[:32], y[:32], torch.arange(32))
    wrong = (model(x[:32]).argmax(1) != y[:32]).sum().item()
    assert 0 < wrong < 48 and not first and len(first) == 0 and len(first.positions) == wrong
    second = sel.select(model, x[32:], y[32:], torch.arange(32, 64))
    assert second and len(second) == 48 and second.step_size == 48
    assert torch.equal(second.index[:wrong], first.positions)  # the first batch's, staged


def test_update_feeds_only_selectors_that_learn_from_steps():
    sel = selection.make("topk_loss")
    assert not sel.learns_from_steps
    sel.update(torch.arange(4), torch.ones(4))  # harmless
    assert selection.make("infobatch").learns_from_steps


def test_unknown_names_and_options_name_the_closest():
    with pytest.raises(ValueError, match="did you mean 'topk_loss'"):
        selection.make("topk_los")
    with pytest.raises(ValueError, match="did you mean 'filter_ratio'"):
        selection.make("rho", filter_ration=0.5, reference=cnn())
    with pytest.raises(ValueError, match="reference="):
        selection.make("rho")
    with pytest.raises(ValueError, match="filter_ratio"):
        selection.make("topk_loss", filter_ratio=1.5)


def test_make_takes_the_yaml_defaults_of_the_runner():
    assert selection.make("uniform").selector.filter_ratio == 0.8  # conf/selector/uniform.yaml
    epoch_batch = selection.make("accuracy_epoch_batch").selector  # a variant of accuracy_epoch
    assert epoch_batch.batchwise and epoch_batch.accumulate
    assert set(SELECTORS) <= set(selection.available())


@pytest.mark.slow
def test_under_ddp_ranks_must_agree_and_local_scope_selects_within_each_share():
    """tests/ddp_selection_checks.py on two gloo ranks: different batches refused on every rank,
    local scope keeps within the rank's share, staging refused with local scope, global scope
    splits the step evenly with weights that make DDP's average the step's mean."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(PROJECT_ROOT / "tests" / "ddp_selection_checks.py")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # two processes share one pipe: their lines may interleave, so match each anywhere
    assert sorted(re.findall(r"rank (\d) ok", done.stdout)) == ["0", "1"], done.stdout
