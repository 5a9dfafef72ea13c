"""Each selector against an independent implementation of its paper's pseudo-code
(tests/reference_impl.py), plus the contract's invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import reference_impl as ref
from saln_exp.errors import ConfigError
from saln_exp.paper_algorithms import saln_algorithm1
from saln_exp.selectors import SELECTORS, Batch, BatchView, ViewSources, build_selector
from saln_exp.selectors.accumulate import Accumulator
from saln_exp.selectors.jest import chunk_sizes, joint_sample
from saln_exp.selectors.loss_qsplit import qsplit_buckets


class LogitsAreInputs(nn.Module):
    """A stand-in learner whose logits are its inputs: selectors see exactly the logits a test sets."""

    def forward_features(self, x):
        return x

    def classifier(self, x):
        return x

    def forward(self, x):
        return x


def make_batch(n=64, classes=10, seed=0, accuracy=0.5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    right = torch.rand(n, generator=g) < accuracy
    logits[right, y[right]] += 6.0  # make about `accuracy` of them correct
    return Batch(index=torch.arange(100, 100 + n), x=logits.float(), y=y)


def view_of(batch, reference_losses=None):
    sources = ViewSources(
        reference_losses=(lambda b: reference_losses) if reference_losses is not None else None
    )
    return BatchView(batch, LogitsAreInputs(), sources)


def select(name, batch, reference_losses=None, seed=0, **options):
    selector = SELECTORS[name](seed=seed, **options)
    return selector, selector.select(batch, view_of(batch, reference_losses))


def np_logits(batch):
    return batch.x.double().numpy(), batch.y.numpy()


# -- deterministic rules against their pseudo-code --------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("filter_ratio", [0.0, 0.5, 0.8])
def test_topk_loss_is_algorithm_3(seed, filter_ratio):
    batch = make_batch(seed=seed)
    _, sel = select("topk_loss", batch, filter_ratio=filter_ratio)
    k = int(len(batch) * (1 - filter_ratio))
    assert sel.positions.tolist() == ref.assist_alg3_topk(*np_logits(batch), k)


@pytest.mark.parametrize("seed", range(5))
def test_hard_accuracy_topk_is_algorithm_5(seed):
    batch = make_batch(seed=seed, accuracy=0.3)
    _, sel = select("hard_accuracy_topk", batch, filter_ratio=0.75)
    assert sel.positions.tolist() == ref.assist_alg5_hard_accuracy_topk(*np_logits(batch), 16)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("filter_ratio", "margin"), [(0.0, 0.1), (0.5, 0.3), (0.8, 0.9)])
def test_soft_accuracy_is_algorithm_6(seed, filter_ratio, margin):
    batch = make_batch(seed=seed, accuracy=0.6)
    _, sel = select("soft_accuracy", batch, filter_ratio=filter_ratio, margin=margin)
    k = int(len(batch) * (1 - filter_ratio))
    assert sel.positions.tolist() == ref.assist_alg6_soft_accuracy(*np_logits(batch), k, margin)


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_filter_is_algorithm_7(seed):
    batch = make_batch(seed=seed)
    _, sel = select("accuracy", batch)
    assert sel.positions.tolist() == ref.assist_alg7_accuracy(*np_logits(batch))
    assert not sel.fallback


@pytest.mark.parametrize("q", [0.25, 0.5, 0.9])
def test_topq_keeps_everything_at_or_above_the_quantile(q):
    batch = make_batch(seed=3)
    _, sel = select("topq_loss", batch, q=q)
    losses = ref.cross_entropy(*np_logits(batch))
    assert sel.positions.tolist() == ref.assist_topq(losses, q)


@pytest.mark.parametrize(("p", "q"), [(1.0, 2), (2.0, 2), (3.0, 4), (0.5, 3)])
def test_qsplit_buckets_are_algorithm_4(p, q):
    losses = ref.cross_entropy(*np_logits(make_batch(n=97, seed=5)))
    ours = [sorted(b.tolist()) for b in qsplit_buckets(torch.tensor(losses), p, q)]
    assert ours == [sorted(b) for b in ref.assist_alg4_buckets(losses, p, q)]


@pytest.mark.parametrize("seed", range(3))
def test_rho_is_top_k_reducible_loss(seed):
    batch = make_batch(seed=seed)
    reference = (
        torch.rand(len(batch), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        * 3
    )
    _, sel = select("rho", batch, reference_losses=reference.float(), filter_ratio=0.9)
    learner = ref.cross_entropy(*np_logits(batch))
    assert sel.positions.tolist() == ref.rho_loss(learner, reference.float().double().numpy(), 6)


@pytest.mark.parametrize(
    ("n", "d", "seed"), [(64, 64, 0), (128, 512, 1), (200, 16, 2), (300, 2048, 3)]
)
@pytest.mark.parametrize("filter_ratio", [0.5, 0.8])
def test_saln_keeps_what_algorithm_1_keeps(n, d, seed, filter_ratio):
    g = torch.Generator().manual_seed(seed)
    features = torch.relu(
        torch.randn(n, 6, generator=g) @ torch.randn(6, d, generator=g)
        + 0.5 * torch.randn(n, d, generator=g)
    )
    batch = Batch(torch.arange(n), features, torch.zeros(n, dtype=torch.long))
    _, sel = select("saln", batch, filter_ratio=filter_ratio, features="pixels", solver="lanczos")
    assert sel.diagnostics["fiedler_gap"] > 1e-6  # non-degenerate: the Fiedler vector is unique
    assert sel.positions.tolist() == sorted(saln_algorithm1(features, filter_ratio).tolist())
    _, dense = select("saln", batch, filter_ratio=filter_ratio, features="pixels", solver="eigh")
    assert dense.positions.tolist() == sel.positions.tolist()


def test_saln_handles_a_zero_feature_row_without_nan():
    g = torch.Generator().manual_seed(0)
    features = torch.relu(torch.randn(80, 32, generator=g))
    features[7] = 0.0
    batch = Batch(torch.arange(80), features, torch.zeros(80, dtype=torch.long))
    for solver in ("lanczos", "eigh"):
        selector, sel = select("saln", batch, features="pixels", solver=solver)
        assert all(np.isfinite(v) for v in sel.diagnostics.values())
        assert len(sel.positions) == selector.keep_count(80) == len(saln_algorithm1(features, 0.8))
        # an isolated vertex disconnects the graph: lambda2 = 0 flags the ambiguous Fiedler vector
        assert abs(sel.diagnostics["lambda2"]) < 1e-9


def test_saln_signed_similarities_warn_once_and_offer_alternatives(caplog):
    g = torch.Generator().manual_seed(1)
    batch = Batch(
        torch.arange(100), torch.randn(100, 20, generator=g), torch.zeros(100, dtype=torch.long)
    )
    selector = SELECTORS["saln"](features="pixels", solver="lanczos")
    for _ in range(3):
        sel = selector.select(batch, view_of(batch))
    assert sel.diagnostics["lambda_min"] < 0
    warnings = [r for r in caplog.records if "indefinite" in r.getMessage()]
    assert len(warnings) == 1 and "similarity=clip" in warnings[0].getMessage()
    for similarity in ("clip", "shift"):
        sel = SELECTORS["saln"](features="pixels", similarity=similarity).select(
            batch, view_of(batch)
        )
        assert sel.diagnostics["lambda_min"] > -1e-9  # a proper graph Laplacian is PSD


# -- sampling rules: same distribution as the reference, by inclusion frequencies ----------------------
def inclusion_frequencies(draw, n, trials):
    counts = np.zeros(n)
    for t in range(trials):
        counts[draw(t)] += 1
    return counts / trials


def assert_same_distribution(ours, theirs, trials):
    # each frequency has standard error <= 0.5 / sqrt(trials); allow 5 joint standard errors
    tolerance = 5 * np.sqrt(2) * 0.5 / np.sqrt(trials)
    assert np.abs(ours - theirs).max() < tolerance, (np.abs(ours - theirs).max(), tolerance)


def test_jest_chunks_keep_exactly_k_and_lose_nothing_to_rounding():
    for k, c in [(13, 16), (51, 16), (16, 16), (100, 7), (1, 16)]:
        sizes = chunk_sizes(k, c)
        assert sum(sizes) == k and all(s > 0 for s in sizes) and len(sizes) <= c
    scores = torch.randn(64, 64, dtype=torch.float64)
    for k in (1, 5, 13, 51):
        picks = joint_sample(scores, k, 16, torch.Generator().manual_seed(0))
        assert len(picks) == k == len(set(picks.tolist()))


def test_jest_conditional_logits_are_scaled_learnability():
    """With s_ij = l_i - r_j, diag + row sums + column sums over a chosen set A equal
    (1 + |A|) (l_j - r_j) + a constant: chunked sampling is softmax sampling on learnability."""
    rng = np.random.default_rng(0)
    learner, reference = rng.exponential(size=50), rng.exponential(size=50)
    scores = learner[:, None] - reference[None, :]
    for size in (1, 4, 20):
        chosen = np.zeros(50)
        chosen[rng.choice(50, size, replace=False)] = 1
        logits = np.diag(scores) + chosen @ scores + scores @ chosen
        scaled = (1 + size) * (learner - reference)
        assert np.allclose(logits - scaled, (logits - scaled)[0])


def test_jest_samples_as_the_reference_algorithm():
    rng = np.random.default_rng(1)
    n, k, chunks, trials = 32, 8, 4, 3000
    learner = rng.exponential(size=n) * 1.5
    reference = rng.exponential(size=n) * 0.5
    batch = make_batch(n=n)
    selector = SELECTORS["jest"](filter_ratio=0.75, n_chunks=chunks, seed=0)
    scores = torch.tensor(learner[:, None] - reference[None, :])
    ours = inclusion_frequencies(
        lambda t: joint_sample(scores, k, chunks, selector.generator).numpy(), n, trials
    )
    ref_rng = np.random.default_rng(2)
    theirs = inclusion_frequencies(
        lambda t: ref.jest_joint_sampling(learner, reference, k, chunks, ref_rng), n, trials
    )
    assert_same_distribution(ours, theirs, trials)
    assert len(batch) == n
    # learnability matters: the most learnable sample is kept far more often than the least
    learnability = learner - reference
    assert ours[learnability.argmax()] > ours[learnability.argmin()] + 0.2


def test_loss_weighted_samples_proportionally_to_loss():
    batch = make_batch(n=40, seed=4, accuracy=0.4)
    losses = ref.cross_entropy(*np_logits(batch))
    selector = SELECTORS["loss_weighted"](filter_ratio=0.75, seed=0)
    trials = 3000
    ours = inclusion_frequencies(
        lambda t: selector.select(batch, view_of(batch)).positions.numpy(), 40, trials
    )
    rng = np.random.default_rng(3)
    theirs = inclusion_frequencies(lambda t: ref.loss_weighted(losses, 10, rng), 40, trials)
    assert_same_distribution(ours, theirs, trials)


def test_loss_qsplit_samples_as_algorithm_4():
    batch = make_batch(n=48, seed=6, accuracy=0.5)
    losses = ref.cross_entropy(*np_logits(batch))
    selector = SELECTORS["loss_qsplit"](filter_ratio=0.75, p=2.0, q=3, seed=0)
    trials = 3000
    ours = inclusion_frequencies(
        lambda t: selector.select(batch, view_of(batch)).positions.numpy(), 48, trials
    )
    rng = np.random.default_rng(4)
    theirs = inclusion_frequencies(
        lambda t: ref.assist_alg4_qsplit(losses, 2.0, 3, 12, rng), 48, trials
    )
    assert_same_distribution(ours, theirs, trials)


def test_uniform_keeps_every_sample_equally_often():
    batch = make_batch(n=50)
    selector = SELECTORS["uniform"](filter_ratio=0.8, seed=0)
    trials = 3000
    ours = inclusion_frequencies(
        lambda t: selector.select(batch, view_of(batch)).positions.numpy(), 50, trials
    )
    assert_same_distribution(ours, np.full(50, 10 / 50), trials)


# -- the contract's invariants, for every selector -----------------------------------------------------
FIXED_SIZE = {"none", "uniform", "saln", "jest", "rho", "topk_loss", "loss_weighted"}


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("n", [1, 7, 64, 100])
def test_invariants(name, n):
    batch = make_batch(n=n, seed=n, accuracy=0.5)
    reference = torch.rand(n, generator=torch.Generator().manual_seed(n))
    options = {"features": "pixels"} if name == "saln" else {}
    selector, sel = select(name, batch, reference_losses=reference, **options)
    positions = sel.positions.tolist()
    assert positions == sorted(set(positions)), "sorted, no duplicates"
    assert all(0 <= p < n for p in positions), "inside the batch"
    assert len(positions) >= 1
    if name in FIXED_SIZE:
        assert (
            len(positions) == selector.keep_count(n) == max(1, int(n * (1 - selector.filter_ratio)))
        )


def test_keep_count_is_the_papers_int_n_times_one_minus_f_float_arithmetic_included():
    selector = SELECTORS["uniform"](filter_ratio=0.8)
    ns = (1, 4, 5, 10, 64, 100, 128, 200, 1024)
    assert [selector.keep_count(n) for n in ns] == [max(1, int(n * (1 - 0.8))) for n in ns]
    assert (
        selector.keep_count(100) == 19
    )  # 100 * 0.19999999999999996, as SALN's Algorithm 1 computes it


def test_view_computes_each_quantity_at_most_once():
    batch = make_batch()
    view = view_of(batch, reference_losses=torch.rand(len(batch)))
    for _ in range(3):
        _ = view.logits, view.losses, view.predictions, view.probabilities, view.reference_losses
        _ = view.features("learner"), view.features("pixels")
    assert view.computed and all(count == 1 for count in view.computed.values()), view.computed


def test_view_leaves_the_model_in_training_mode_and_batch_norm_untouched():
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(10))
    model.forward_features = model.forward
    model.classifier = nn.Identity()
    model.train()
    before = model[1].running_mean.clone()
    _ = BatchView(make_batch(), model).logits
    assert model.training and torch.equal(before, model[1].running_mean)


def test_fallback_draws_uniformly_and_says_so():
    batch = make_batch(accuracy=1.0)
    batch.x[torch.arange(len(batch)), batch.y] += 100.0  # nothing misclassified
    for name in ("accuracy", "hard_accuracy_topk"):
        selector, sel = select(name, batch, filter_ratio=0.5)
        assert sel.fallback
        assert len(sel.positions) == selector.keep_count(len(batch))
    _, sel = select(
        "accuracy", make_batch(accuracy=0.9), min_keep=20
    )  # a few errors, fewer than min_keep
    assert sel.fallback and len(sel.positions) == 64


def test_unknown_selector_option_is_a_config_error():
    with pytest.raises(ConfigError, match="has no option"):
        SELECTORS["saln"](featurez="pixels")


def test_build_selector_passes_only_selector_options(make_cfg):
    cfg = make_cfg("selector=soft_accuracy", "selector.margin=0.2")
    selector = build_selector(cfg.selector, seed=0)
    assert selector.margin == 0.2 and selector.filter_ratio == 0.0


# -- accumulation (ASSIST Algorithm 10) ---------------------------------------------------------------
def test_accumulator_trains_exactly_batch_size_and_counts_overflow():
    acc = Accumulator(batch_size=10)
    rng = np.random.default_rng(0)
    trained, kept_total, next_index = [], 0, 0
    for _ in range(50):
        k = int(rng.integers(0, 14))
        index = torch.arange(next_index, next_index + k)
        next_index += k
        kept_total += k
        full = acc.add(Batch(index, index.float()[:, None], index % 3))
        if full is not None:
            assert len(full) == 10
            assert torch.equal(full.x[:, 0].long(), full.index)  # rows stay aligned
            trained.append(full.index)
    assert kept_total == 10 * len(trained) + acc.overflow + acc.count
    flat = torch.cat(trained)
    assert len(set(flat.tolist())) == len(flat)  # nothing trained twice
    assert all(torch.equal(t, torch.sort(t).values) for t in trained)  # first-come order kept


def test_accumulator_state_round_trip():
    acc = Accumulator(8)
    acc.add(Batch(torch.arange(5), torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)))
    restored = Accumulator(8)
    restored.load_state_dict(acc.state_dict(), torch.device("cpu"))
    assert restored.count == 5 and restored.overflow == 0
    full = restored.add(
        Batch(torch.arange(5, 9), torch.ones(4, 2), torch.ones(4, dtype=torch.long))
    )
    assert full.index.tolist() == list(range(8)) and restored.overflow == 1
