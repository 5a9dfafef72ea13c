"""ASSIST's filters (Algorithms 3-7) and its loss-based random selectors, transcribed from the
pseudo-code: the oracles for the accuracy, top-k / top-q loss, loss_weighted and loss_qsplit
selectors."""

from __future__ import annotations

import numpy as np

from oracles.losses import cross_entropy, softmax


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
