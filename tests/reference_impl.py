"""Independent reference implementations, transcribed from the papers' pseudo-code with numpy.

They are deliberately naive (loops, lists, numpy instead of torch) so that they share no code
and no shortcuts with saln_exp's selectors. Line comments cite the pseudo-code.
"""

from __future__ import annotations

import numpy as np


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def assist_alg3_topk(logits, y, k):
    """ASSIST Algorithm 3: losses <- C(predictions, Y); idx_desc <- argsort(losses); S[idx_desc[0:k]]."""
    losses = cross_entropy(logits, y)
    idx_desc = np.argsort(-losses, kind="stable")
    return sorted(idx_desc[:k].tolist())


def assist_alg5_hard_accuracy_topk(logits, y, k):
    """ASSIST Algorithm 5: filter <- argmax(predictions) != Y; top k of the filtered by loss."""
    filt = logits.argmax(axis=1) != y
    positions = [i for i in range(len(y)) if filt[i]]
    losses = cross_entropy(logits[filt], y[filt])
    idx_desc = np.argsort(-losses, kind="stable")
    return sorted(positions[i] for i in idx_desc[:k])


def assist_alg6_soft_accuracy(logits, y, k, alpha):
    """ASSIST Algorithm 6: hard accuracy + top-k, then all correct samples whose two highest
    beliefs differ by at most alpha."""
    filt = logits.argmax(axis=1) != y
    cdx = softmax(logits)
    marginal = []
    for i in range(len(y)):
        if not filt[i]:
            p, q = sorted(cdx[i], reverse=True)[0:2]
            if p - q <= alpha:
                marginal.append(i)
    return sorted(assist_alg5_hard_accuracy_topk(logits, y, k) + marginal)


def assist_alg7_accuracy(logits, y):
    """ASSIST Algorithm 7: D# <- D where argmax(predictions) != Y."""
    return [i for i in range(len(y)) if logits[i].argmax() != y[i]]


def assist_topq(losses, q):
    """ASSIST's top-q selector: every sample at or above the q-quantile of the losses."""
    threshold = np.quantile(losses, q)
    return [i for i in range(len(losses)) if losses[i] >= threshold]


def assist_alg4_buckets(losses, p, q):
    """ASSIST Algorithm 4 lines 4-14, with cuml indexed by sorted position."""
    idx_asc = np.argsort(losses, kind="stable")
    cuml = np.cumsum(losses[idx_asc] ** p)
    buckets = [[] for _ in range(q)]
    bs = cuml[-1] / q
    b_i = 0
    for rank, i in enumerate(idx_asc):
        buckets[b_i].append(int(i))
        if cuml[rank] >= bs * (b_i + 1) and b_i < q - 1:
            b_i += 1
    return buckets


def assist_alg4_qsplit(losses, p, q, k, rng):
    """ASSIST Algorithm 4: equally many random samples (k/q) from each bucket."""
    picks = []
    share, extra = divmod(k, q)
    for j, bucket in enumerate(assist_alg4_buckets(losses, p, q)):
        want = min(share + (1 if j >= q - extra else 0), len(bucket))
        picks += rng.choice(bucket, size=want, replace=False).tolist()
    return sorted(picks)


def loss_weighted(losses, k, rng):
    """Loss-weighted random selection: k draws without replacement, p proportional to loss."""
    return sorted(rng.choice(len(losses), size=k, replace=False, p=losses / losses.sum()).tolist())


def rho_loss(learner_losses, reference_losses, k):
    """RHO-LOSS: top-k of the reducible loss."""
    reducible = learner_losses - reference_losses
    return sorted(np.argsort(-reducible, kind="stable")[:k].tolist())


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
