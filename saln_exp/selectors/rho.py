"""RHO-LOSS (Mindermann et al. 2022): keep the top-k reducible holdout loss, learner loss minus
irreducible loss (the reference model's loss, trained on the held-out split)."""

from __future__ import annotations

import torch

from saln_exp.reference import ReferenceLosses
from saln_exp.selectors.base import Batch, BatchView, RunContext, Selector, ViewSources


class RhoLoss(Selector):
    name = "rho"

    def __init__(self, filter_ratio: float = 0.9, reference: dict | None = None, **common):
        super().__init__(filter_ratio=filter_ratio, **common)
        self.reference_options = dict(reference or {})

    def prepare(self, ctx: RunContext) -> ViewSources:
        return ViewSources(reference_losses=ReferenceLosses.prepare(ctx, self.reference_options))

    def choose(self, batch: Batch, view: BatchView):
        reducible = view.losses - view.reference_losses
        keep = torch.topk(reducible, self.keep_count(len(batch))).indices
        return keep, {
            "reducible_kept": reducible[keep].mean().item(),
            "reducible_mean": reducible.mean().item(),
        }
