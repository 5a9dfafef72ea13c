"""The reference ("irreducible loss") model that JEST and RHO-LOSS score samples against.

Given `selector.reference.checkpoint` it is loaded; otherwise it is trained first on the held-out
(validation) split, as RHO-LOSS does, and cached under `paths.cache_dir/reference/` by a hash of
everything that determines it (data, model, optimizer, epochs, seed), so a sweep trains it once.
When training batches are not augmented, its per-sample losses on the training split are
precomputed once and looked up by dataset index, with the labels stored beside them and checked
on every lookup (RHO-LOSS's order check); with augmentation they are computed on the batch itself.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saln_exp import rng
from saln_exp.cache import dataset_content, fingerprint, load_or_compute
from saln_exp.data.base import DataBundle, Split
from saln_exp.errors import ConfigError
from saln_exp.fit import fit
from saln_exp.metrics import per_sample_outputs
from saln_exp.models import build_model
from saln_exp.safe_load import UNREADABLE, load_plain

if TYPE_CHECKING:  # the selectors package imports this module: no runtime import back
    from saln_exp.selectors.base import Batch, RunContext

log = logging.getLogger(__name__)


def reference_settings(ctx: RunContext, options: dict[str, Any]) -> dict[str, Any]:
    """The reference model's full recipe, with the learner's choices as defaults."""
    learner = ctx.learner
    if learner is None:
        raise ValueError("a reference model is trained from the learner's recipe (ctx.learner)")
    split = options.get("split", "auto")
    if split == "auto":
        split = "val" if ctx.data.val is not None else "train"
    if split == "val" and ctx.data.val is None:
        raise ConfigError(
            "selector.reference.split=val needs a validation split; set dataset.val_fraction > 0"
        )
    if split not in ("val", "train"):
        raise ConfigError(f"selector.reference.split must be auto, val or train, got {split!r}")
    return {
        "split": split,
        "model": options.get("model") or learner.model,
        "optimizer": options.get("optimizer") or learner.optimizer,
        "epochs": int(options.get("epochs", 10)),
        "batch_size": int(options.get("batch_size") or learner.batch_size),
        "seed": int(learner.seed),
    }


def fit_reference(
    model: nn.Module, split: Split, data: DataBundle, settings: dict[str, Any], device: torch.device
) -> None:
    """Plain mini-batch SGD on the held-out split (no selection, no evaluation)."""
    generator = rng.generator(settings["seed"], "reference_order")
    fit(model, split, data, settings, generator, desc=f"reference model on {settings['split']}",
        lr_key="selector.reference.optimizer")  # fmt: skip


class ReferenceLosses:
    """Per-sample losses of the reference model for a candidate batch."""

    def __init__(self, model: nn.Module, losses: Tensor | None, targets: Tensor | None, autocast):
        self.model = model
        self.losses = losses  # by source index, when precomputed
        self.targets = targets  # labels the precomputed losses were computed with
        self.autocast = autocast

    def __call__(self, batch: Batch) -> Tensor:
        if self.losses is not None:
            if not torch.equal(self.targets[batch.index], batch.y):
                raise RuntimeError(
                    "reference losses are out of order: cached labels differ from the batch's; "
                    "delete the reference cache under paths.cache_dir/reference"
                )
            return self.losses[batch.index]
        with torch.inference_mode(), self.autocast():
            logits = self.model(batch.x).float()
        return F.cross_entropy(logits, batch.y, reduction="none")

    @classmethod
    def prepare(cls, ctx: RunContext, options: dict[str, Any]) -> ReferenceLosses:
        model = cls.load_or_train(ctx, options)
        if ctx.data.augmented:
            return cls(model, None, None, ctx.autocast)
        train = ctx.data.train
        losses, _, _ = per_sample_outputs(model, train, ctx.data.pipeline, ctx.eval_batch_size)
        by_index = torch.zeros(len(ctx.data.noisy), device=ctx.device)
        targets = torch.full((len(ctx.data.noisy),), -1, dtype=torch.long, device=ctx.device)
        by_index[train.indices] = losses
        targets[train.indices] = train.targets
        return cls(model, by_index, targets, ctx.autocast)

    @staticmethod
    def load_or_train(ctx: RunContext, options: dict[str, Any]) -> nn.Module:
        settings = reference_settings(ctx, options)
        model = build_model(settings["model"], ctx.data.in_shape, ctx.data.num_classes).to(
            ctx.device
        )
        checkpoint = options.get("checkpoint")
        if checkpoint:
            if not Path(checkpoint).exists():
                raise ConfigError(f"selector.reference.checkpoint not found: {checkpoint}")
            try:
                model.load_state_dict(load_plain(checkpoint, ctx.device))
            except (*UNREADABLE, KeyError, TypeError) as err:
                raise ConfigError(
                    f"selector.reference.checkpoint {checkpoint} is not a state_dict of "
                    f"model={settings['model']['name']} ({type(err).__name__})"
                ) from None
            return model.eval()
        split = ctx.data.val if settings["split"] == "val" else ctx.data.train
        key = fingerprint(dataset_content(ctx.dataset, split), settings)
        path = Path(ctx.cache_dir) / "reference" / f"{key}.pt"

        def load(file: Path) -> nn.Module:
            loaded = copy.deepcopy(model)  # a half-loaded state must not leak into training
            loaded.load_state_dict(load_plain(file, ctx.device))
            return loaded.eval()

        def train() -> nn.Module:
            if settings["split"] == "train":
                log.warning(
                    "reference model: no validation split, so it trains on the training split; "
                    "set dataset.val_fraction > 0 for a held-out reference as in RHO-LOSS"
                )
            with rng.isolated(rng.stream_seed(settings["seed"], "reference_fit"), ctx.device):
                fit_reference(model, split, ctx.data, settings, ctx.device)
            log.info(
                "reference model: trained %d epochs on %s", settings["epochs"], settings["split"]
            )
            return model

        model, _ = load_or_compute(
            path, "reference model", load, train, lambda m, tmp: torch.save(m.state_dict(), tmp)
        )
        return model
