"""ASSIST Algorithm 8 (epochwise filtering): at each epoch start, keep the training samples the
model misclassifies (eval mode, no augmentation) and train the epoch on those only.

`batchwise: true` also filters every batch of that epoch (ASSIST's "Epoch + Batch" runs; combine
with `selector.accumulate=true` for Algorithm 10's stable batch size). An epoch with fewer than
`min_keep` misclassified samples trains on the whole set without accumulation (ASSIST's fallback
to plain SGD) and on nothing with it (Alg. 10: a filter that keeps nothing adds nothing).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saln_exp.selectors.base import Batch, BatchView, RunContext, Selector


class EpochAccuracyFilter(Selector):
    name = "accuracy_epoch"
    style = ("#CC79A7", "X")  # colour and marker in every figure (report/style.py)
    overflow_rule = "discard"  # with accumulation: ASSIST Alg. 10 drops what does not fit

    def __init__(self, batchwise: bool = False, **common):
        super().__init__(**common)
        self.batchwise = bool(batchwise)
        self.epoch_kept_frac = 1.0

    def epoch_positions(self, ctx: RunContext) -> Tensor:
        train = ctx.data.train
        _, predictions, _ = ctx.train_outputs.get(
            ctx.model, train, ctx.data.pipeline, ctx.eval_batch_size
        )
        wrong = torch.nonzero(predictions != train.targets).flatten()
        self.epoch_kept_frac = len(wrong) / len(train)
        accumulating = self.accumulate
        if len(wrong) < self.min_keep and not accumulating:
            # nothing left to learn from: the non-accumulating fallback trains on the whole set;
            # with accumulation the epoch adds nothing, as a batch without errors does (Alg. 10)
            return torch.arange(len(train))
        return wrong

    def state_dict(self) -> dict:  # a mid-epoch resume must log the epoch's own kept fraction
        return {**super().state_dict(), "epoch_kept_frac": self.epoch_kept_frac}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.epoch_kept_frac = float(state.get("epoch_kept_frac", 1.0))

    def choose(self, batch: Batch, view: BatchView):
        diagnostics = {"epoch_kept_frac": self.epoch_kept_frac}
        if not self.batchwise:
            return torch.arange(len(batch)), diagnostics
        return torch.nonzero(view.predictions != batch.y).flatten(), diagnostics
