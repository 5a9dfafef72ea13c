"""JEST (Evans et al. 2024, Algorithm 1) as the SALN paper uses it: learnability, chunked sampling.

JEST scores a batch by the learnability of a batch-level (contrastive) loss: the matrix
s_ij = learner loss of pair (i, j) - reference loss of the same pair (i, j). It draws the kept
set in `n_chunks` chunks, each without replacement from the softmax of the conditional logits of
every unchosen j given the chosen set A,
    logit_j = s_jj + sum_{i in A} s_ij + sum_{i in A} s_ji,
and the first chunk (A empty) from the softmax of the diagonal s_jj, i.e. the samples' own
learnability (JEST's Algorithm 1 draws it with `random.choice(logits_ii, n_draws)`; the uniform
first chunk of some third-party ports is `first_chunk: uniform`).

Image classification has a per-sample loss (cross-entropy): a pair (i, j != i) has no loss, so
the score matrix is diagonal, s = diag(l - r), and every chunk, whatever was chosen before, is
drawn from softmax(l - r) over the unchosen samples at one fixed temperature. That is what runs
here, on the vector l - r. `joint_sample` also takes a full score matrix, so a batch-level loss
(`batch_scores`) slots in.
Exactly k = int(n (1 - f)) samples are kept: the chunks split k without losing any to rounding
(JEST's int(n (1 - f) / n_chunks) per chunk would keep fewer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saln_exp.errors import ConfigError
from saln_exp.selectors.base import Batch, BatchView
from saln_exp.selectors.with_reference import WithReferenceModel

FIRST_CHUNK = ("learnability", "uniform")


def chunk_sizes(k: int, n_chunks: int) -> list[int]:
    """Split k over n_chunks, larger chunks first; never loses a sample to rounding."""
    base, extra = divmod(k, n_chunks)
    return [s for s in (base + (1 if i < extra else 0) for i in range(n_chunks)) if s > 0]


def per_sample_scores(learner: Tensor, reference: Tensor) -> Tensor:
    """JEST's scores for a per-sample loss: the diagonal of its score matrix (no pair terms)."""
    return learner.double().cpu() - reference.double().cpu()


def joint_sample(
    scores: Tensor,
    k: int,
    n_chunks: int,
    generator: torch.Generator,
    first_chunk: str = "learnability",
) -> Tensor:
    """JEST's chunked joint sampling; returns k distinct positions.

    `scores` is the n x n score matrix of a batch-level loss, or the n learnabilities of a
    per-sample loss (a diagonal matrix, whose conditional logits are the learnabilities
    themselves: no O(n^2) work per chunk)."""
    n = scores.shape[0]
    scores = scores.double().cpu()
    diagonal = scores if scores.dim() == 1 else scores.diagonal()
    chosen = torch.zeros(n, dtype=torch.bool)
    picks = []
    for number, size in enumerate(chunk_sizes(k, n_chunks)):
        if number == 0 and first_chunk == "uniform":
            pick = torch.randperm(n, generator=generator)[:size]
        else:
            logits = diagonal.clone()
            if scores.dim() == 2:  # + sum_{i in A} s_ij + sum_{i in A} s_ji
                mask = chosen.double()
                logits += mask @ scores + scores @ mask
            logits[chosen] = -torch.inf
            probs = torch.softmax(logits, dim=0)
            pick = torch.multinomial(probs, size, replacement=False, generator=generator)
        chosen[pick] = True
        picks.append(pick)
    return torch.cat(picks)


class JEST(WithReferenceModel):
    name = "jest"
    style = ("#D55E00", "^")  # colour and marker in every figure (report/style.py)

    def __init__(
        self,
        filter_ratio: float = 0.8,
        n_chunks: int = 16,
        first_chunk: str = "learnability",
        **common,
    ):
        super().__init__(filter_ratio=filter_ratio, **common)
        if int(n_chunks) < 1:
            raise ConfigError(f"selector.n_chunks must be at least 1, got {n_chunks}")
        if first_chunk not in FIRST_CHUNK:
            raise ConfigError(
                f"selector.first_chunk must be one of {FIRST_CHUNK} for selector=jest, "
                f"got {first_chunk!r}"
            )
        self.n_chunks = int(n_chunks)
        self.first_chunk = first_chunk

    def batch_scores(self, view: BatchView) -> Tensor:
        """Learnability: per-sample cross-entropy gives the diagonal of JEST's score matrix only
        (a batch-level loss would return the n x n matrix here)."""
        return per_sample_scores(view.losses, view.reference_losses)

    def choose(self, batch: Batch, view: BatchView):
        scores = self.batch_scores(view)
        k = self.keep_count(len(batch))
        keep = joint_sample(scores, k, self.n_chunks, self.generator, self.first_chunk)
        learnability = scores if scores.dim() == 1 else scores.diagonal()
        return keep, {"learnability_kept": learnability[keep].mean().item(),
                      "learnability_mean": learnability.mean().item()}  # fmt: skip
