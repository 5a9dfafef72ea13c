"""Selectors: one module per selector, registered by name. `build_selector` is the only entry point.

To add one: write `saln_exp/selectors/<name>.py` with a `Selector` subclass (set `name`, implement
`choose`), add it to SELECTORS below, and add `conf/selector/<name>.yaml`.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from saln_exp.selectors.accuracy import AccuracyFilter
from saln_exp.selectors.accuracy_epoch import EpochAccuracyFilter
from saln_exp.selectors.base import Batch, BatchView, RunContext, Selection, Selector, ViewSources
from saln_exp.selectors.divbs import DivBS
from saln_exp.selectors.hard_accuracy_topk import HardAccuracyTopK
from saln_exp.selectors.importance import ImportanceSampling
from saln_exp.selectors.infobatch import InfoBatch
from saln_exp.selectors.jest import JEST
from saln_exp.selectors.loss_qsplit import LossQSplit
from saln_exp.selectors.loss_weighted import LossWeighted
from saln_exp.selectors.none import NoSelection
from saln_exp.selectors.rho import RhoLoss
from saln_exp.selectors.rs2 import RS2
from saln_exp.selectors.saln import SALN
from saln_exp.selectors.selective_backprop import SelectiveBackprop
from saln_exp.selectors.soft_accuracy import SoftAccuracyFilter
from saln_exp.selectors.topk_loss import TopKLoss
from saln_exp.selectors.topq_loss import TopQLoss
from saln_exp.selectors.uniform import Uniform

SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (
        NoSelection,
        Uniform,
        SALN,
        JEST,
        RhoLoss,
        AccuracyFilter,
        EpochAccuracyFilter,
        SoftAccuracyFilter,
        HardAccuracyTopK,
        TopKLoss,
        TopQLoss,
        LossWeighted,
        LossQSplit,
        InfoBatch,
        RS2,
        SelectiveBackprop,
        ImportanceSampling,
        DivBS,
    )
}

# Options the trainer reads (how selections become optimizer steps); the rest go to the selector.
TRAINER_KEYS = ("name", "accumulate", "candidate_batch_size", "loss_diagnostics")

__all__ = [
    "SELECTORS",
    "Batch",
    "BatchView",
    "RunContext",
    "Selection",
    "Selector",
    "ViewSources",
    "build_selector",
]


def build_selector(cfg: DictConfig, seed: int) -> Selector:
    options = {
        k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in TRAINER_KEYS
    }
    return SELECTORS[cfg.name](seed=seed, **options)
