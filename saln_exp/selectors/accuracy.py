"""ASSIST Algorithm 7 (Filter: accuracy / error): keep the misclassified samples.

Run with accumulation (ASSIST Algorithm 10, on by default in conf/selector/accuracy.yaml) the
kept samples pile up over raw batches until `batch_size` are ready. When a batch has fewer than
`min_keep` errors the selector falls back to a uniform draw of the whole batch (plain SGD), as
ASSIST did when the filter ran dry.
"""

from __future__ import annotations

import torch

from saln_exp.selectors.base import Batch, BatchView, Selector


class AccuracyFilter(Selector):
    name = "accuracy"

    def choose(self, batch: Batch, view: BatchView):
        wrong = view.predictions != batch.y
        return torch.nonzero(wrong).flatten(), {"error_frac": wrong.float().mean().item()}
