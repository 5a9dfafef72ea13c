"""RS2, repeated random sampling without replacement (Okanovic et al., "Repeated Random Sampling
for Minimizing the Time-to-Accuracy of Learning", ICLR 2024, Algorithm 1 without replacement), as
its authors' `UniformNoReplacement` (`src/DeepCore/deepcore/methods/uniform_no_replacement.py`,
`coresetmethod.py` of github.com/PatrikOkanovic/RS2 at commit
99edfc8a323abc8da09217165ecf57fb569240ea) draws it, but for the pass boundary.

Every epoch trains on a random subset of the training set of size k = round(N * r), the code's
`round(n_train * fraction)`, r = 1 - filter_ratio taken as the decimal it stands for (the paper's
selection ratio; its headline runs use r = 10%: 6,000 of 60,000). Subsets are consecutive chunks
of one random permutation, so no sample is seen twice before every sample was seen once; when the
permutation is exhausted a new one starts. Where fewer than k samples are left in the current
pass, the epoch takes those and fills up with the first samples of a new permutation of the others:
an epoch never holds a sample twice, and use counts never differ by more than one. The authors'
code instead takes the rest of the pass plus the first samples of the same permutation, k - 1 in
all (its `end = (end + k) % (N + 1)`), then starts a new permutation (docs/selectors.md). Every
candidate batch of the epoch is trained on whole.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saln_exp.selectors.base import Batch, BatchView, RunContext, Selector


class RS2(Selector):
    name = "rs2"
    style = ("#DDDDDD", "H")  # colour and marker in every figure (report/style.py)

    def __init__(self, **common):
        super().__init__(**common)
        self.order: Tensor | None = None  # the current pass's permutation of training positions
        self.cursor = 0  # how much of it earlier epochs used

    def epoch_positions(self, ctx: RunContext) -> Tensor:
        n = len(ctx.data.train)
        k = max(1, round(n * self.kept_ratio()))  # the code's round(n_train * fraction)
        if self.order is None or len(self.order) != n:
            self.order, self.cursor = torch.randperm(n, generator=self.generator), 0
        chunk = self.order[self.cursor : self.cursor + k]
        self.cursor += len(chunk)
        if len(chunk) < k:  # the pass ends inside this epoch: fill up from a new pass
            others = torch.ones(n, dtype=torch.bool)
            others[chunk] = False
            rest = torch.nonzero(others).flatten()
            fill = rest[torch.randperm(len(rest), generator=self.generator)[: k - len(chunk)]]
            # the new pass: the fill first (used now), then everything else, `chunk` included
            unused = torch.ones(n, dtype=torch.bool)
            unused[fill] = False
            remaining = torch.nonzero(unused).flatten()
            self.order = torch.cat(
                [fill, remaining[torch.randperm(len(remaining), generator=self.generator)]]
            )
            self.cursor = len(fill)
            chunk = torch.cat([chunk, fill])
        return torch.sort(chunk).values

    def choose(self, batch: Batch, view: BatchView):
        return torch.arange(len(batch)), {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "order": self.order, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.order, self.cursor = state["order"], int(state["cursor"])
