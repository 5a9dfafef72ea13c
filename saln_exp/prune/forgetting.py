"""Forgetting-event pruning (Toneva et al. 2019, "An Empirical Study of Example Forgetting").

A scoring model is trained for `prune.epochs` epochs over the whole training split; every training
batch's own predictions (before the step, as in the paper's Algorithm 1) update a
ForgettingTracker. A forgetting event is a sample going from correct to incorrect between two
consecutive presentations. Samples learned at some point and never forgotten are
"unforgettable" and are dropped. Samples never learned count as forgotten infinitely often
(the paper's convention), so they score +inf and are always kept. `fraction` caps how many are
dropped (as a fraction of the split): the earliest-learned unforgettable samples go first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saln_exp.data.base import DataBundle
from saln_exp.fit import fit
from saln_exp.forgetting import ForgettingTracker
from saln_exp.prune.common import (
    PruneJob,
    PruneResult,
    check_fraction,
    new_model,
    register_method,
    scorer_settings,
)
from saln_exp.rng import isolated


def forgetting_scores(events: np.ndarray, learned: np.ndarray) -> np.ndarray:
    """Forgetting events per sample, +inf for never-learned samples (Toneva et al.)."""
    return np.where(learned, events.astype(np.float64), np.inf)


def drop_unforgettable(
    events: np.ndarray, learned: np.ndarray, first_learned: np.ndarray, fraction: float | None
) -> np.ndarray:
    """Keep mask without the unforgettable samples (learned, zero events); with `fraction`, at
    most int(fraction * n) of them, earliest first-learned first (ties by position)."""
    n = len(events)
    unforgettable = np.flatnonzero(learned & (events == 0))
    if fraction is not None:
        order = np.lexsort((unforgettable, first_learned[unforgettable]))
        unforgettable = unforgettable[order][: int(fraction * n)]
    keep = np.ones(n, dtype=bool)
    keep[unforgettable] = False
    return keep


def check(p: Mapping[str, Any]) -> None:
    check_fraction(p, "fraction", allow_none=True)


@register_method("forgetting", check)
def prune(job: PruneJob, data: DataBundle, device: torch.device) -> PruneResult:
    settings = scorer_settings(job)
    train = data.train
    tracker = ForgettingTracker(
        len(data.noisy), device
    )  # keyed by source index, like the trainer's
    first_learned = torch.full((len(data.noisy),), -1, dtype=torch.long, device=device)

    def count(epoch: int, pos: Tensor, logits: Tensor) -> None:
        index = train.indices[pos]
        correct = logits.argmax(1) == train.targets[pos]
        tracker.update(index, correct)
        new = correct & (first_learned[index] < 0)
        first_learned[index[new]] = epoch

    with isolated(settings["seed"], device):
        model = new_model(settings, data, device)
        g = torch.Generator().manual_seed(settings["seed"])
        fit(model, train, data, settings, g, on_batch=count, desc="forgetting",
            progress=job.progress)  # fmt: skip
    idx = train.indices
    events = tracker.events[idx].cpu().numpy()
    learned = tracker.learned[idx].cpu().numpy()
    first = first_learned[idx].cpu().numpy()
    fraction = job.options.get("fraction")
    keep = drop_unforgettable(events, learned, first, None if fraction is None else float(fraction))
    arrays = {"events": events, "learned": learned, "first_learned_epoch": first}
    info = {
        "unforgettable": int((learned & (events == 0)).sum()),
        "never_learned": int((~learned).sum()),
        "events_total": int(events.sum()),
    }
    return PruneResult(keep, forgetting_scores(events, learned), arrays, info)
