"""Label-issue pruning with confident learning (Northcutt et al. 2021), through cleanlab.

Out-of-sample predicted probabilities come from K-fold cross-validated training: for each fold a
fresh scoring model is trained for `prune.epochs` epochs on the other K-1 folds and predicts the
held-out fold in eval mode without augmentation, so no sample is scored by a model that saw its
(possibly wrong) label. cleanlab's `find_label_issues` then estimates the confident joint of given
and latent labels and flags the samples to remove (`filter_by`, `frac_noise`, ... are its own
options, passed through); flagged samples are dropped. Scores are cleanlab's label-quality scores
turned around (1 - quality), so that larger = more suspicious, as for the other methods.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from saln_exp.data.base import DataBundle
from saln_exp.errors import ConfigError
from saln_exp.fit import fit
from saln_exp.metrics import per_sample_outputs
from saln_exp.prune.common import (
    PruneJob,
    PruneResult,
    check_integer,
    new_model,
    register_method,
    scorer_settings,
)
from saln_exp.rng import isolated

FILTER_BY = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
QUALITY_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")


def fold_positions(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out positions of each fold: class-stratified when every class has `folds` members."""
    counts = np.bincount(labels)
    stratify = counts[counts > 0].min() >= folds
    splitter = (StratifiedKFold if stratify else KFold)(folds, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels)]


def out_of_sample_probs(
    job: PruneJob, data: DataBundle, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(pred_probs n x C, fold id per sample) by K-fold cross-validated training."""
    settings = scorer_settings(job)
    train = data.train
    labels = train.targets.cpu().numpy()
    folds = fold_positions(labels, int(job.options["folds"]), settings["seed"])
    probs = np.zeros((len(train), data.num_classes), dtype=np.float64)
    fold_id = np.zeros(len(train), dtype=np.int64)
    for k, held in enumerate(folds):
        fit_pos = torch.as_tensor(np.setdiff1d(np.arange(len(train)), held), device=device)
        held_pos = torch.as_tensor(held, device=device)
        with isolated(settings["seed"] + k, device):
            model = new_model(settings, data, device)
            g = torch.Generator().manual_seed(settings["seed"] + k)
            fit(model, train, data, settings, g, positions=fit_pos,
                desc=f"confident_learning fold {k + 1}/{len(folds)}",
                progress=job.progress)  # fmt: skip
            _, _, logits = per_sample_outputs(
                model, train, data.pipeline, job.eval_batch_size, held_pos
            )
        probs[held] = torch.softmax(logits.double(), dim=1).cpu().numpy()
        fold_id[held] = k
    return probs, fold_id


def check(p: Mapping[str, Any]) -> None:
    check_integer(p, "folds", 2)
    check_integer(p, "min_examples_per_class", 0)
    if p["filter_by"] not in FILTER_BY:
        raise ConfigError(f"prune.filter_by must be one of {FILTER_BY}, got {p['filter_by']!r}")
    if p["quality"] not in QUALITY_METHODS:
        raise ConfigError(f"prune.quality must be one of {QUALITY_METHODS}, got {p['quality']!r}")
    frac_noise = p.get("frac_noise")
    if (
        isinstance(frac_noise, bool)
        or not isinstance(frac_noise, int | float)
        or not 0 < frac_noise <= 1
    ):
        raise ConfigError(f"prune.frac_noise must be a number in (0, 1], got {frac_noise!r}")


@register_method("confident_learning", check)
def prune(job: PruneJob, data: DataBundle, device: torch.device) -> PruneResult:
    # imported here: cleanlab pulls in a large dependency tree every run would otherwise load
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    p = job.options
    probs, fold_id = out_of_sample_probs(job, data, device)
    labels = data.train.targets.cpu().numpy()
    per_class = p.get("num_to_remove_per_class")
    with warnings.catch_warnings():  # cleanlab warns about tiny classes; the record says enough
        warnings.simplefilter("ignore")
        flagged = find_label_issues(
            labels,
            probs,
            filter_by=str(p["filter_by"]),
            frac_noise=float(p["frac_noise"]),
            num_to_remove_per_class=list(per_class) if per_class else None,
            min_examples_per_class=int(p["min_examples_per_class"]),
            n_jobs=1,  # no worker pool: the machine's cores belong to the run
        )
        quality = get_label_quality_scores(labels, probs, method=str(p["quality"]))
    info = {
        "cv_acc_given_labels": float((probs.argmax(1) == labels).mean()),
        "flagged": int(flagged.sum()),
    }
    if data.clean_targets is not None:
        info["cv_acc_clean_labels"] = float(
            (probs.argmax(1) == data.clean_targets.cpu().numpy()).mean()
        )
    arrays = {"pred_probs": probs.astype(np.float32), "fold": fold_id, "flagged": flagged}
    return PruneResult(~flagged, 1.0 - quality, arrays, info)
