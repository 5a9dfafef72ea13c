"""ASSIST Algorithm 3 (loss sorted top-k): keep the k samples with the highest loss."""

from __future__ import annotations

import torch

from saln_exp.selectors.base import Batch, BatchView, Selector


class TopKLoss(Selector):
    name = "topk_loss"
    style = ("#882255", "p")  # colour and marker in every figure (report/style.py)

    def __init__(self, filter_ratio: float = 0.5, **common):
        super().__init__(filter_ratio=filter_ratio, **common)

    def choose(self, batch: Batch, view: BatchView):
        return torch.topk(view.losses, self.keep_count(len(batch))).indices, {}
