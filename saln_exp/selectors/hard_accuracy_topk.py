"""ASSIST Algorithm 5 (hard accuracy + top-k): keep the misclassified samples, then the k of them
with the highest loss (k = int(n * (1 - filter_ratio))).

With fewer than k misclassified samples the thesis (section 3.2.1, after Alg. 5) fills the
selection with random samples, "essentially defaulting back to SGD": every error is kept and the
remaining k - errors are drawn uniformly, without replacement, from the correctly classified
samples of the batch. `select/filled` logs how many were drawn (mean per candidate batch), so the
selection always holds exactly k samples and the generic fallback never fires for this selector.
"""

from __future__ import annotations

import torch

from saln_exp.selectors.base import Batch, BatchView, Selector


class HardAccuracyTopK(Selector):
    name = "hard_accuracy_topk"
    style = ("#56B4E9", "<")  # colour and marker in every figure (report/style.py)
    overflow_rule = "discard"  # with accumulation: ASSIST Alg. 10 drops what does not fit

    def choose(self, batch: Batch, view: BatchView):
        wrong_mask = view.predictions != batch.y
        wrong = torch.nonzero(wrong_mask).flatten()
        k = self.keep_count(len(batch))
        hardest = wrong[torch.topk(view.losses[wrong], min(k, len(wrong))).indices]
        n_fill = k - len(hardest)
        correct = torch.nonzero(~wrong_mask).flatten()
        fill = (
            correct[self.uniform(len(correct), n_fill).to(correct.device)]
            if n_fill
            else correct[:0]
        )
        return torch.cat([hardest, fill]), {
            "error_frac": len(wrong) / len(batch),
            "filled": float(n_fill),
        }
