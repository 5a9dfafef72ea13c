"""RHO-LOSS (Mindermann et al. 2022): keep the top-k reducible holdout loss, learner loss minus
irreducible loss (the reference model's loss, trained on the held-out split)."""

from __future__ import annotations

import torch

from saln_exp.selectors.base import Batch, BatchView
from saln_exp.selectors.with_reference import WithReferenceModel


class RhoLoss(WithReferenceModel):
    name = "rho"
    style = ("#009E73", "v")  # colour and marker in every figure (report/style.py)

    def __init__(self, filter_ratio: float = 0.9, **common):
        super().__init__(filter_ratio=filter_ratio, **common)

    def choose(self, batch: Batch, view: BatchView):
        reducible = view.losses - view.reference_losses
        keep = torch.topk(reducible, self.keep_count(len(batch))).indices
        return keep, {
            "reducible_kept": reducible[keep].mean().item(),
            "reducible_mean": reducible.mean().item(),
        }
