"""Forgetting events (Toneva et al. 2019): exact counts on hand-made prediction sequences, the
`prune=forgetting` method dropping exactly the unforgettable samples, and the histogram figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saln_exp.config import prune_job
from saln_exp.data import build_data
from saln_exp.forgetting import ForgettingTracker
from saln_exp.prune import forgetting as forgetting_method
from saln_exp.prune import prune_dataset
from saln_exp.prune.forgetting import drop_unforgettable, forgetting_scores
from saln_exp.report.noise import forgetting_counts, forgetting_histogram

# correct (1) / incorrect (0) at each presentation, per dataset index
SEQUENCES = {
    0: [1, 1, 1, 1, 1, 1],  # learned at once, never forgotten: unforgettable
    1: [0, 1, 0, 1, 0, 1],  # forgotten twice
    2: [0, 0, 0, 0, 0, 0],  # never learned: forgotten infinitely often by convention
    3: [1, 0, 0, 0, 1, 1],  # forgotten once, re-learned
    4: [0, 0, 1, 1, 1, 1],  # learned late, never forgotten: unforgettable
    5: [1, 0, 1, 0, 1, 0],  # forgotten three times, ends wrong
}
EXPECTED_EVENTS = {0: 0, 1: 2, 2: 0, 3: 1, 4: 0, 5: 3}


def replay(
    tracker: ForgettingTracker, sequences: dict[int, list[int]], seed: int = 0, every: int = 1
) -> list[int]:
    """Present every index once per epoch, in shuffled mini-batches of 4 as a trainer would,
    reading the new forgetting events every `every` batches (0: only at the end)."""
    rng = np.random.default_rng(seed)
    counts, batches = [], 0
    for epoch in range(len(next(iter(sequences.values())))):
        order = rng.permutation(list(sequences))
        for start in range(0, len(order), 4):
            index = torch.as_tensor(order[start : start + 4])
            correct = torch.tensor([bool(sequences[int(i)][epoch]) for i in index])
            tracker.update(index, correct)
            batches += 1
            if every and batches % every == 0:
                counts.append(int(tracker.new_events()))
    counts.append(int(tracker.new_events()))
    return counts


@pytest.mark.parametrize(
    "every", [1, 3, 0], ids=["each batch", "every 3 batches", "once at the end"]
)
def test_forgetting_counts_on_hand_made_sequences_are_exact(every):
    """However many presentations are applied together (a sample is presented six times before
    the end when `every` is 0), the counts are the hand-made sequences' own."""
    tracker = ForgettingTracker(8)  # indices 6 and 7 are never presented
    counts = replay(tracker, SEQUENCES, every=every)
    events = tracker.events.tolist()
    assert {i: events[i] for i in SEQUENCES} == EXPECTED_EVENTS
    assert sum(counts) == sum(EXPECTED_EVENTS.values())  # new_events() counts each event once
    assert tracker.learned.tolist() == [True, True, False, True, True, True, False, False]
    assert tracker.presented.tolist() == [6] * 6 + [0, 0]
    assert tracker.last.tolist() == [1, 1, 0, 1, 1, 0, -1, -1]  # the last presentation's
    summary = tracker.summary(torch.arange(8))
    assert summary["forget/events_total"] == 6
    assert summary["forget/events_mean"] == pytest.approx(1.0)  # over the 6 presented samples
    assert summary["forget/unforgettable_frac"] == pytest.approx(2 / 6)
    assert summary["forget/never_learned_frac"] == pytest.approx(1 / 6)


def test_a_checkpoint_carries_the_presentations_recorded_since_the_last_read():
    """state_dict() applies what update() recorded: a tracker restored from it after three
    epochs, fed the last three, ends where one fed all six ends."""
    straight, first = ForgettingTracker(8), ForgettingTracker(8)
    replay(straight, SEQUENCES)
    index = torch.as_tensor(list(SEQUENCES))
    for epoch in range(3):  # recorded, never read before the checkpoint
        first.update(index, torch.tensor([bool(SEQUENCES[int(i)][epoch]) for i in index]))
    resumed = ForgettingTracker(8)
    resumed.load_state_dict(first.state_dict())
    replay(resumed, {i: seq[3:] for i, seq in SEQUENCES.items()})
    for key in ("last", "events", "learned", "presented"):
        assert torch.equal(getattr(resumed, key), getattr(straight, key)), key


def test_never_learned_counts_as_forgotten_infinitely_often_and_is_kept():
    tracker = ForgettingTracker(6)
    replay(tracker, SEQUENCES)
    events, learned = tracker.events.numpy(), tracker.learned.numpy()
    scores = forgetting_scores(events, learned)
    assert scores.tolist() == [0, 2, np.inf, 1, 0, 3]
    first_learned = np.array([0, 1, -1, 0, 2, 0])
    keep = drop_unforgettable(events, learned, first_learned, fraction=None)
    assert np.flatnonzero(~keep).tolist() == [0, 4]  # exactly the unforgettable ones
    # a cap of int(1/6 * 6) = 1 sample drops the earliest-learned unforgettable sample first
    capped = drop_unforgettable(events, learned, first_learned, fraction=1 / 6)
    assert np.flatnonzero(~capped).tolist() == [0]


def test_forgetting_pruning_drops_exactly_the_unforgettable_samples(
    make_cfg, tmp_path, monkeypatch
):
    """The scoring run's batch predictions are replaced by a known random correct/incorrect
    sequence per sample; the method must drop exactly the samples an independent recount calls
    unforgettable, and keep every never-learned one."""
    epochs = 4
    cfg = make_cfg("prune=forgetting", f"prune.epochs={epochs}", "prune.cache=false")
    data = build_data(cfg.dataset, cfg.paths, "cpu")
    n = len(data.train)
    rng = np.random.default_rng(3)
    pattern = rng.random((n, epochs)) < rng.uniform(0.1, 0.95, size=(n, 1))  # by train position

    def scripted_fit(model, split, data, settings, generator, positions=None, on_batch=None, **_):
        for epoch in range(settings["epochs"]):
            order = torch.randperm(len(split), generator=generator)
            for start in range(0, len(order), 64):
                pos = order[start : start + 64]
                want = torch.as_tensor(pattern[pos.numpy(), epoch])
                wrong = (split.targets[pos] + 1) % data.num_classes
                label = torch.where(want, split.targets[pos], wrong)
                on_batch(epoch, pos, torch.nn.functional.one_hot(label, data.num_classes).float())
        return model

    monkeypatch.setattr(forgetting_method, "fit", scripted_fit)
    pruned, record = prune_dataset(prune_job(cfg), data, torch.device("cpu"), tmp_path / "run")

    # independent recount: a forgetting event is correct -> incorrect between consecutive epochs
    events = (pattern[:, :-1] & ~pattern[:, 1:]).sum(1)
    learned = pattern.any(1)
    unforgettable = learned & (events == 0)
    assert unforgettable.any() and (~learned).any()  # the sequence exercises both cases
    index = data.train.indices.numpy()
    saved = json.loads((tmp_path / "run" / "prune.json").read_text())
    assert sorted(saved["dropped_index"]) == sorted(index[unforgettable].tolist())
    assert set(pruned.train.indices.tolist()) == set(index[~unforgettable].tolist())
    assert set(index[~learned]) <= set(pruned.train.indices.tolist())
    assert record["prune/dropped"] == int(unforgettable.sum())
    with np.load(tmp_path / "run" / "prune_scores.npz") as scores:
        assert scores["events"].tolist() == events.tolist()
        assert np.isinf(scores["score"][~learned]).all()
    assert saved["info"]["never_learned"] == int((~learned).sum())


def test_forgetting_histogram_splits_noisy_and_clean(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    events = np.array([0, 0, 1, 2, 0, 3, 1, 0])
    learned = np.array([1, 1, 1, 1, 0, 1, 1, 0], bool)
    noisy = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    np.savez(
        run / "forgetting.npz", index=np.arange(8), events=events, learned=learned,
        presented=np.full(8, 5), noisy=noisy,
    )  # fmt: skip
    (run / "summary.json").write_text(
        json.dumps({"config": {"selector": {"name": "none"}, "seed": 0,
                               "dataset": {"label_noise": {"rate": 0.5}}}})
    )  # fmt: skip
    counts = forgetting_counts(run).set_index(["group", "events"])["n"]
    assert counts[("clean", 0.0)] == 2 and counts[("clean", 1.0)] == 1
    assert counts[("noisy", np.inf)] == 2  # never learned
    assert counts[("noisy", 3.0)] == 1 and counts[("noisy", 1.0)] == 1
    assert counts.groupby(level=0).sum().to_dict() == {"clean": 4, "noisy": 4}
    paths = forgetting_histogram(run, tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
