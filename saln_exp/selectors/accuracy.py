"""ASSIST Algorithm 7 (Filter: accuracy / error): keep the misclassified samples.

Run with accumulation (ASSIST Algorithm 10, on by default in conf/selector/accuracy.yaml) the
kept samples pile up over raw batches until `batch_size` are ready, and a batch without a single
error adds nothing: as the model improves, raw batches per step grow and steps per epoch shrink
(ASSIST 3.3.2: "several epochs may pass without a training step being performed"). Only without
accumulation (Alg. 9) does a batch with fewer than `min_keep` errors fall back to a uniform draw
of the whole batch (plain SGD), as ASSIST did when the filter ran dry.
"""

from __future__ import annotations

import torch

from saln_exp.selectors.base import Batch, BatchView, Selector


class AccuracyFilter(Selector):
    name = "accuracy"
    style = ("#E69F00", "P")  # colour and marker in every figure (report/style.py)
    overflow_rule = "discard"  # with accumulation: ASSIST Alg. 10 drops what does not fit

    def choose(self, batch: Batch, view: BatchView):
        wrong = view.predictions != batch.y
        return torch.nonzero(wrong).flatten(), {"error_frac": wrong.float().mean().item()}
