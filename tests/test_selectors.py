"""Each selector against an independent implementation of its paper's pseudo-code
(the `oracles` package, shared with the benchmark), plus the contract's invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import oracles as ref
from oracles import saln_algorithm1
from saln_exp.errors import ConfigError
from saln_exp.selectors import SELECTORS, Batch, BatchView, ViewSources, build_selector
from saln_exp.selectors.accumulate import Accumulator
from saln_exp.selectors.jest import chunk_sizes, joint_sample, per_sample_scores
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


def stage(acc: Accumulator, batch: Batch, **end) -> list[Batch]:
    """Stage one candidate batch's kept samples; the batches ready to train on, as the trainer
    takes them."""
    acc.add(batch)
    ready = []
    while (one := acc.ready(**end)) is not None:
        ready.append(one)
    return ready


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


def test_jest_per_sample_conditional_logits_are_the_learnability_itself():
    """A per-sample loss has no pair terms: JEST's score matrix is diag(l - r), so the conditional
    logits s_jj + sum_A s_ij + sum_A s_ji of every unchosen j are l_j - r_j, whatever A holds
    (no temperature that falls with |A|)."""
    rng = np.random.default_rng(0)
    learner, reference = rng.exponential(size=50), rng.exponential(size=50)
    learnability = per_sample_scores(torch.tensor(learner), torch.tensor(reference))
    assert np.array_equal(learnability.numpy(), learner - reference)
    scores = np.diag(learnability.numpy())
    for size in (1, 4, 20):
        chosen = np.zeros(50)
        chosen[rng.choice(50, size, replace=False)] = 1
        logits = np.diag(scores) + chosen @ scores + scores @ chosen
        unchosen = chosen == 0
        assert np.allclose(logits[unchosen], (learner - reference)[unchosen])


def test_jest_on_the_learnability_vector_draws_what_the_diagonal_matrix_draws():
    """The per-sample fast path (a vector) and the general score-matrix path pick the same
    samples from the same random stream."""
    learnability = torch.tensor(np.random.default_rng(3).normal(size=64))
    for first_chunk in ("learnability", "uniform"):
        a = joint_sample(learnability, 13, 4, torch.Generator().manual_seed(5), first_chunk)
        b = joint_sample(
            torch.diag(learnability), 13, 4, torch.Generator().manual_seed(5), first_chunk
        )
        assert torch.equal(a, b)


def jest_select(batch, reference, first_chunk="learnability", n_chunks=4, filter_ratio=0.75):
    selector = SELECTORS["jest"](
        filter_ratio=filter_ratio, n_chunks=n_chunks, first_chunk=first_chunk, seed=0
    )
    return lambda t: selector.select(
        batch, view_of(batch, torch.tensor(reference))
    ).positions.numpy()


@pytest.mark.parametrize("first_chunk", ["learnability", "uniform"])
def test_jest_samples_as_its_algorithm_with_a_per_sample_loss(first_chunk):
    """Inclusion frequencies of the selector (learner losses from its own forward) against the
    transcription of JEST's Algorithm 1 for a diagonal score matrix."""
    n, k, chunks, trials = 32, 8, 4, 3000
    batch = make_batch(n=n, seed=3, accuracy=0.5)
    learner = ref.cross_entropy(*np_logits(batch))
    reference = np.random.default_rng(1).exponential(size=n) * 0.5
    ours = inclusion_frequencies(jest_select(batch, reference, first_chunk, chunks), n, trials)
    rng = np.random.default_rng(2)
    theirs = inclusion_frequencies(
        lambda t: ref.jest_joint_sampling(
            learner, reference, k, chunks, rng, first_uniform=first_chunk == "uniform"
        ),
        n,
        trials,
    )
    assert_same_distribution(ours, theirs, trials)
    learnability = learner - reference
    assert ours[learnability.argmax()] > ours[learnability.argmin()] + 0.2


def test_jest_one_draw_is_the_softmax_of_the_learnability():
    """k = 1: P(keep j) = exp(l_j - r_j) / sum exp(l - r), exactly, at temperature one."""
    n, trials = 10, 6000
    batch = make_batch(n=n, seed=5, accuracy=0.3)
    learner = ref.cross_entropy(*np_logits(batch))
    reference = np.linspace(0.0, 1.0, n)
    ours = inclusion_frequencies(
        jest_select(batch, reference, filter_ratio=0.9, n_chunks=16), n, trials
    )
    learnability = learner - reference
    softmax = np.exp(learnability - learnability.max())
    assert_same_distribution(ours, softmax / softmax.sum(), trials)


def test_jest_keeps_the_most_learnable_set_as_often_as_its_algorithm():
    """A joint event, not a marginal: P(the 12 most learnable of 64 are all kept), which a falling
    temperature (the old (1 + |A|) scaling) inflates."""
    n, k, trials = 64, 12, 2000
    batch = make_batch(n=n, seed=7, accuracy=0.4)
    learner = ref.cross_entropy(*np_logits(batch))
    reference = np.random.default_rng(8).exponential(size=n) * 0.2
    top = set(np.argsort(-(learner - reference))[:k].tolist())
    draw = jest_select(batch, reference, n_chunks=4, filter_ratio=1 - (k + 0.5) / n)
    ours = np.mean([set(draw(t).tolist()) == top for t in range(trials)])
    rng = np.random.default_rng(9)
    theirs = np.mean(
        [set(ref.jest_joint_sampling(learner, reference, k, 4, rng)) == top for _ in range(trials)]
    )
    assert abs(ours - theirs) < 5 * np.sqrt(2 * 0.25 / trials), (ours, theirs)


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


def no_errors_batch(n=64):
    batch = make_batch(n=n, accuracy=1.0)
    batch.x[torch.arange(len(batch)), batch.y] += 100.0  # nothing misclassified
    return batch


def test_fallback_draws_uniformly_and_says_so_without_accumulation():
    selector, sel = select("accuracy", no_errors_batch(), filter_ratio=0.5)
    assert sel.fallback
    assert len(sel.positions) == selector.keep_count(64)
    _, sel = select(
        "accuracy", make_batch(accuracy=0.9), min_keep=20
    )  # a few errors, fewer than min_keep
    assert sel.fallback and len(sel.positions) == 64


@pytest.mark.parametrize("name", ["accuracy", "accuracy_epoch", "soft_accuracy", "topq_loss"])
def test_with_accumulation_a_batch_with_nothing_to_keep_adds_nothing(name):
    """ASSIST 3.3.2: with accumulation, a batch without errors contributes nothing (epochs may
    pass without a step); the uniform fallback belongs to the non-accumulating mode only."""
    options = {"batchwise": True} if name == "accuracy_epoch" else {}
    options |= {"margin": 0.01} if name == "soft_accuracy" else {}  # +100 logits: no near ties
    options |= (
        {"min_keep": 100} if name == "topq_loss" else {}
    )  # topq always keeps some: force "too few"
    batch = no_errors_batch()
    selector = SELECTORS[name](seed=0, **options)
    sel = selector.select(batch, view_of(batch), accumulating=True)
    assert not sel.fallback
    if name != "topq_loss":
        assert len(sel.positions) == 0
        accumulator = Accumulator(batch_size=8, overflow_rule=selector.overflow_rule)
        assert stage(accumulator, batch.take(sel.positions)) == [] and accumulator.count == 0
    assert selector.select(batch, view_of(batch), accumulating=False).fallback


def test_hard_accuracy_topk_fills_up_to_k_with_random_correct_samples():
    """ASSIST 3.2.1 after Alg. 5: too few errors => fill with random samples (here: correctly
    classified ones, uniformly), so exactly k are kept and every error is among them."""
    trials = 3000
    batch = make_batch(n=40, seed=11, accuracy=0.9)
    logits, y = np_logits(batch)
    wrong = set(np.flatnonzero(logits.argmax(1) != y).tolist())
    selector = SELECTORS["hard_accuracy_topk"](filter_ratio=0.5, seed=0)
    k = selector.keep_count(40)
    assert 0 < len(wrong) < k
    counts = np.zeros(40)
    for _ in range(trials):
        sel = selector.select(batch, view_of(batch))
        kept = sel.positions.tolist()
        assert len(kept) == k == len(set(kept)) and wrong <= set(kept) and not sel.fallback
        assert sel.diagnostics["filled"] == k - len(wrong)
        counts[kept] += 1
    correct = [i for i in range(40) if i not in wrong]
    expected = (k - len(wrong)) / len(correct)  # each correct sample equally likely to fill
    assert_same_distribution(counts[correct] / trials, np.full(len(correct), expected), trials)
    sel = selector.select(no_errors_batch(40), view_of(no_errors_batch(40)))
    assert len(sel.positions) == k and sel.diagnostics["filled"] == k and not sel.fallback


def test_saln_keeps_one_sample_where_int_n_times_one_minus_f_is_zero():
    """Our reading of SALN's int(n * (1 - f)) = 0 (n = 4, f = 0.8): keep one sample. Algorithm 1
    as printed takes argsort(...)[-0:], the whole batch: the strictest filter would keep all."""
    batch = make_batch(n=4)
    assert sorted(saln_algorithm1(batch.x, filter_ratio=0.8).tolist()) == [0, 1, 2, 3]
    selector, sel = select("saln", batch, filter_ratio=0.8, features="pixels")
    assert int(4 * (1 - 0.8)) == 0 and selector.keep_count(4) == 1 and len(sel.positions) == 1


def test_unknown_selector_option_is_a_config_error():
    with pytest.raises(ConfigError, match="has no option"):
        SELECTORS["saln"](featurez="pixels")


def test_build_selector_passes_only_selector_options(make_cfg):
    cfg = make_cfg("selector=soft_accuracy", "selector.margin=0.2")
    selector = build_selector(cfg.selector, seed=0)
    assert selector.margin == 0.2 and selector.filter_ratio == 0.0


# -- accumulation (ASSIST Algorithm 10; Selective-Backprop's staging) --------------------------------
def test_only_assists_accuracy_filters_discard_what_overflows_a_batch():
    """ASSIST Alg. 10 drops kept samples that do not fit a full batch, for its accuracy filters;
    every other selector carries them to the next step (Selective-Backprop's staging)."""
    assist = {"accuracy", "accuracy_epoch", "soft_accuracy", "hard_accuracy_topk"}
    rules = {name: cls.overflow_rule for name, cls in SELECTORS.items()}
    assert {name for name, rule in rules.items() if rule == "discard"} == assist
    assert {rule for name, rule in rules.items() if name not in assist} == {"carry"}


def labelled(start: int, n: int) -> Batch:
    index = torch.arange(start, start + n)
    return Batch(index, index.float()[:, None], index % 3)


def test_carried_overflow_waits_for_the_next_step_and_nothing_is_lost():
    acc = Accumulator(batch_size=10, overflow_rule="carry")
    rng = np.random.default_rng(0)
    trained, kept_total = [], 0
    for _ in range(50):
        k = int(rng.integers(0, 25))  # sometimes more than two batches' worth at once
        for ready in stage(acc, labelled(kept_total, k)):
            assert len(ready) == 10 and torch.equal(ready.x[:, 0].long(), ready.index)
            trained.append(ready.index)
        kept_total += k
    flat = torch.cat(trained)
    assert torch.equal(flat, torch.arange(len(flat)))  # every one, once, first come first served
    assert acc.overflow == 0 and len(flat) + acc.count == kept_total and acc.count < 10


def test_carried_samples_at_an_epochs_end_as_the_authors_get_batch():
    """Selective-Backprop's `get_batch(final=True)`: with no full batch, the staged samples are
    trained as one smaller step; once a full batch formed, the rest waits for the next epoch.
    The run's end trains everything."""
    acc = Accumulator(batch_size=10, overflow_rule="carry")
    assert [len(b) for b in stage(acc, labelled(0, 7), epoch_end=True)] == [7]
    assert [len(b) for b in stage(acc, labelled(7, 13), epoch_end=True)] == [10]
    assert acc.count == 3
    assert [len(b) for b in stage(acc, labelled(20, 0), epoch_end=True)] == [3]
    assert [len(b) for b in stage(acc, labelled(23, 12), run_end=True)] == [10, 2]
    assert acc.count == 0


def test_discarded_overflow_is_never_flushed_at_an_epochs_end():
    acc = Accumulator(batch_size=10, overflow_rule="discard")
    assert stage(acc, labelled(0, 7), epoch_end=True, run_end=True) == []
    assert [len(b) for b in stage(acc, labelled(7, 25))] == [10] and acc.overflow == 22


def test_accumulator_trains_exactly_batch_size_and_counts_overflow():
    acc = Accumulator(batch_size=10, overflow_rule="discard")
    rng = np.random.default_rng(0)
    trained, kept_total, next_index = [], 0, 0
    for _ in range(50):
        k = int(rng.integers(0, 14))
        index = torch.arange(next_index, next_index + k)
        next_index += k
        kept_total += k
        for full in stage(acc, Batch(index, index.float()[:, None], index % 3)):
            assert len(full) == 10
            assert torch.equal(full.x[:, 0].long(), full.index)  # rows stay aligned
            trained.append(full.index)
    assert kept_total == 10 * len(trained) + acc.overflow + acc.count
    flat = torch.cat(trained)
    assert len(set(flat.tolist())) == len(flat)  # nothing trained twice
    assert all(torch.equal(t, torch.sort(t).values) for t in trained)  # first-come order kept


def test_accumulator_state_round_trip():
    acc = Accumulator(8, "discard")
    stage(acc, Batch(torch.arange(5), torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)))
    restored = Accumulator(8, "discard")
    restored.load_state_dict(acc.state_dict(), torch.device("cpu"))
    assert restored.count == 5 and restored.overflow == 0
    (full,) = stage(
        restored, Batch(torch.arange(5, 9), torch.ones(4, 2), torch.ones(4, dtype=torch.long))
    )
    assert full.index.tolist() == list(range(8)) and restored.overflow == 1


def test_accumulator_steps_as_soon_as_the_batch_is_full():
    """Our reading of Alg. 10's step condition: the prose's "once the batch is filled" (>=), not
    the pseudo-code's len(FB) > size_FB, which would hold a batch of exactly size_FB back, wait
    for the next raw batch and then discard its kept samples as overflow."""
    acc = Accumulator(batch_size=8, overflow_rule="discard")
    half = Batch(torch.arange(4), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    assert stage(acc, half) == []
    (full,) = stage(
        acc, Batch(torch.arange(4, 8), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    )
    assert full.index.tolist() == list(range(8))
    assert acc.overflow == 0 and acc.count == 0


def test_class_balance_and_topk_overlap_diagnostics_from_their_definitions():
    import math

    from saln_exp.selectors.diagnostics import class_entropy_ratio, topk_loss_overlap

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert class_entropy_ratio(labels, torch.tensor([0, 2, 4, 6]), 4) == pytest.approx(
        1.0
    )  # one per class
    assert class_entropy_ratio(labels, torch.tensor([0, 1]), 4) == 0.0  # one class only
    two = -2 * 0.5 * math.log(0.5)
    assert class_entropy_ratio(labels, torch.tensor([0, 2]), 4) == pytest.approx(two / math.log(4))
    losses = torch.tensor([0.1, 5.0, 0.2, 4.0, 0.3, 3.0, 0.4, 2.0])
    assert topk_loss_overlap(losses, torch.tensor([1, 3, 5, 7])) == 1.0  # exactly the top 4
    assert topk_loss_overlap(losses, torch.tensor([0, 2, 4, 6])) == 0.0
    assert topk_loss_overlap(losses, torch.tensor([1, 0])) == 0.5
