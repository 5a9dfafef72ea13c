"""The archetype: train on the whole batch (ASSIST Algorithm 1, SALN's "standard training")."""

import torch

from saln_exp.selectors.base import Batch, BatchView, Selector


class NoSelection(Selector):
    name = "none"

    def choose(self, batch: Batch, view: BatchView):
        return torch.arange(len(batch)), {}
