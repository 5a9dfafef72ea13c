"""Batch selection in a Lightning training loop: one callback (`pip install saln-exp[lightning]`).

    sel = selection.make("topk_loss")
    trainer = L.Trainer(callbacks=[SelectBatches(sel)], ...)

Before each training batch `[x, y, index]` (what default_collate makes of `selection.Indexed`),
the callback asks the selector which samples to train on and appends the answer, a
`selection.Kept`, to the batch: `training_step` unpacks `x, y, index, kept = batch`, trains on
`kept.x, kept.y` weighted by `kept.weights`, returns None where `not kept` (a staging selector
without a full batch yet; Lightning then skips the step) and otherwise
`{"loss": ..., "losses": per-sample losses}`; after the step the callback hands the losses to
`sel.update`. docs/own-loop.md has the whole module.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from saln_exp.selection import BatchSelector, Kept


class SelectBatches(Callback):
    def __init__(self, selector: BatchSelector):
        self.selector = selector

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, list) or len(batch) != 3:
            raise TypeError(
                "SelectBatches needs training batches [x, y, index] as a list (default_collate's "
                "batch of selection.Indexed(dataset)), to append what the selector kept"
            )
        x, y, index = batch
        batch.append(self.selector.select(pl_module, x, y, index))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        kept: Kept = batch[-1]
        if not kept or not self.selector.learns_from_steps:
            return
        if not isinstance(outputs, dict) or "losses" not in outputs:
            raise ValueError(
                f"selector {self.selector.name!r} learns from the training losses: return "
                '{"loss": loss, "losses": per_sample_losses} from training_step'
            )
        self.selector.update(kept.index, outputs["losses"])
