"""JEST (Evans et al. 2024) joint sampling for a per-sample loss: the oracle for the jest selector."""

from __future__ import annotations

import numpy as np


def jest_joint_sampling(learner_losses, reference_losses, k, n_chunks, rng, first_uniform=False):
    """JEST (Evans et al. 2024, Algorithm 1) for a per-sample loss, transcribed from the text.

    JEST's scores are learner minus reference loss of the same pair of a batch-level loss; a
    per-sample loss has no pair (i, j != i) terms, so the score matrix is diag(l - r) and the
    conditional logits of every unchosen sample are its own learnability. Chunk by chunk: draw
    `size` samples without replacement from softmax(learnability) over the unchosen ones. The
    first chunk is drawn the same way (`random.choice(logits_ii, n_draws)`) unless
    `first_uniform`. k is split over the chunks as evenly as possible, larger chunks first."""
    n = len(learner_losses)
    learnability = np.asarray(learner_losses, dtype=float) - np.asarray(
        reference_losses, dtype=float
    )
    sizes = [k // n_chunks + (1 if c < k % n_chunks else 0) for c in range(n_chunks)]
    chosen = []
    for number, size in enumerate(s for s in sizes if s > 0):
        candidates = [j for j in range(n) if j not in chosen]
        if number == 0 and first_uniform:
            chosen += rng.choice(candidates, size=size, replace=False).tolist()
            continue
        for _ in range(size):  # without replacement = one draw at a time from what is left
            logits = np.array([learnability[j] for j in candidates])
            p = np.exp(logits - logits.max())
            pick = candidates[int(rng.choice(len(candidates), p=p / p.sum()))]
            chosen.append(pick)
            candidates.remove(pick)
    return sorted(chosen)
