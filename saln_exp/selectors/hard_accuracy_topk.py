"""ASSIST Algorithm 5 (hard accuracy + top-k): keep the misclassified samples, then the k of them
with the highest loss (k = int(n * (1 - filter_ratio)))."""

from __future__ import annotations

import torch

from saln_exp.selectors.base import Batch, BatchView, Selector


class HardAccuracyTopK(Selector):
    name = "hard_accuracy_topk"

    def choose(self, batch: Batch, view: BatchView):
        wrong = torch.nonzero(view.predictions != batch.y).flatten()
        k = min(self.keep_count(len(batch)), len(wrong))
        return wrong[torch.topk(view.losses[wrong], k).indices], {
            "error_frac": len(wrong) / len(batch)
        }
