"""The archetype: train on the whole batch (ASSIST Algorithm 1, SALN's "standard training")."""

import torch

from saln_exp.selectors.base import Batch, BatchView, Selector


class NoSelection(Selector):
    name = "none"
    style = ("#000000", "o")  # colour and marker in every figure (report/style.py)

    def choose(self, batch: Batch, view: BatchView):
        return torch.arange(len(batch)), {}
