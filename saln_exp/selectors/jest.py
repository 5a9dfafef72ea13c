"""JEST (Evans et al. 2024) as the SALN paper uses it: joint sampling by learnability in chunks.

Learnability score matrix s_ij = l_i - r_j (learner loss of i minus reference loss of j). The
first chunk is drawn uniformly; each next chunk is drawn without replacement from the softmax of
the conditional learnability of every unchosen j given the chosen set A:
    logit_j = s_jj + sum_{i in A} s_ij + sum_{i in A} s_ji.
With per-sample cross-entropy this is (1 + |A|) (l_j - r_j) + a constant: the conditional logits
are the learnability scaled by the chunk's size so far, so "joint" sampling is independent softmax
sampling on learnability with a temperature that falls from chunk to chunk. The score matrix is
kept anyway (tests verify the identity), so a batch-level loss would slot in unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saln_exp.errors import ConfigError
from saln_exp.reference import ReferenceLosses
from saln_exp.selectors.base import Batch, BatchView, RunContext, Selector, ViewSources


def chunk_sizes(k: int, n_chunks: int) -> list[int]:
    """Split k over n_chunks, larger chunks first; never loses a sample to rounding."""
    base, extra = divmod(k, n_chunks)
    return [s for s in (base + (1 if i < extra else 0) for i in range(n_chunks)) if s > 0]


def joint_sample(scores: Tensor, k: int, n_chunks: int, generator: torch.Generator) -> Tensor:
    """JEST's chunked joint sampling on a score matrix; returns k distinct positions."""
    n = scores.shape[0]
    sizes = chunk_sizes(k, n_chunks)
    chosen = torch.zeros(n, dtype=torch.bool)
    scores = scores.double().cpu()
    diagonal = scores.diagonal()
    first = torch.randperm(n, generator=generator)[: sizes[0]]
    chosen[first] = True
    picks = [first]
    for size in sizes[1:]:
        mask = chosen.double()
        logits = diagonal + mask @ scores + scores @ mask  # sum_{i in A} s_ij + sum_{i in A} s_ji
        logits[chosen] = -torch.inf
        probs = torch.softmax(logits, dim=0)
        pick = torch.multinomial(probs, size, replacement=False, generator=generator)
        chosen[pick] = True
        picks.append(pick)
    return torch.cat(picks)


class JEST(Selector):
    name = "jest"

    def __init__(
        self, filter_ratio: float = 0.8, n_chunks: int = 16, reference: dict | None = None, **common
    ):
        super().__init__(filter_ratio=filter_ratio, **common)
        if int(n_chunks) < 1:
            raise ConfigError(f"selector.n_chunks must be at least 1, got {n_chunks}")
        self.n_chunks = int(n_chunks)
        self.reference_options = dict(reference or {})

    def prepare(self, ctx: RunContext) -> ViewSources:
        return ViewSources(reference_losses=ReferenceLosses.prepare(ctx, self.reference_options))

    def choose(self, batch: Batch, view: BatchView):
        learner, ref = view.losses, view.reference_losses
        scores = learner[:, None] - ref[None, :]
        keep = joint_sample(scores, self.keep_count(len(batch)), self.n_chunks, self.generator)
        learnability = learner - ref
        return keep, {"learnability_kept": learnability[keep.to(learnability.device)].mean().item(),
                      "learnability_mean": learnability.mean().item()}  # fmt: skip
