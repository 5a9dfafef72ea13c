"""What every pruning method shares: the scoring models' recipe, an isolated random stream, one
short training loop, the kept subset of a DataBundle, and label-noise bookkeeping.

A scoring model is trained in its own random stream (`rng.isolated`), so pruning never shifts the
learner's initialisation or batch order: a run with `prune=X` draws exactly the numbers the same
run with `prune=none` draws once the training split is fixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from saln_exp.cache import plain
from saln_exp.data.base import DataBundle, Split
from saln_exp.errors import ConfigError
from saln_exp.fit import Recipe, fit
from saln_exp.models import build_model
from saln_exp.registry import Registry
from saln_exp.rng import add_stream, isolated, stream_seed


@dataclass
class PruneResult:
    """What a method decides: `keep` per position of `data.train`, one score per position (its
    ranking quantity; larger = harder / more suspicious), extra per-sample arrays for
    prune_scores.npz and a few numbers for prune.json."""

    keep: np.ndarray
    scores: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PruneJob:
    """What a pruning method reads, as plain values: its options (the `prune` group's keys),
    the learner's recipe its scoring models default to, the dataset's options (cache keys and
    the label-noise record), where to cache, and the un-augmented passes' batch size."""

    options: dict[str, Any]
    learner: Recipe
    dataset: dict[str, Any]
    cache_dir: str
    eval_batch_size: int = 1024
    progress: bool = False  # progress bars for the scoring models

    @property
    def method(self) -> str:
        return str(self.options.get("name", "none"))


Prune = Callable[[PruneJob, DataBundle, torch.device], PruneResult]


@dataclass(frozen=True)
class Method:
    """A pruning method: `prune(job, data, device)`, `check(options)` (one ConfigError line for
    a wrong option of its own, before any scoring model is trained) and the fewest scoring epochs
    it takes (0: it can score at initialisation)."""

    prune: Prune
    check: Callable[[Mapping[str, Any]], None]
    min_epochs: int = 1


METHODS: Registry[Method] = Registry("pruning method")


def register_method(
    name: str,
    check: Callable[[Mapping[str, Any]], None],
    min_epochs: int = 1,
    stream_offset: int | None = None,
) -> Callable[[Prune], Prune]:
    """Decorate a method module's `prune` to register it as `prune=<name>` (its YAML's `name:`).
    Its scoring models draw from the random stream `prune/<name>`: `stream_offset` names its
    offset (saln_exp/rng.py holds those of the methods that came with the package)."""
    if stream_offset is not None:
        add_stream(f"prune/{name}", stream_offset)
    return METHODS.decorator(name, lambda prune: Method(prune, check, min_epochs))


def check_integer(p: Mapping[str, Any], key: str, low: int) -> None:
    value = p.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"prune.{key} must be an integer >= {low}, got {value!r}")


def check_fraction(p: Mapping[str, Any], key: str, allow_none: bool = False) -> None:
    value = p.get(key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(f"prune.{key} must be a number in [0, 1), got {value!r}")


DROP = ("easy", "hard")


def check_scored_fraction(p: Mapping[str, Any]) -> None:
    """The options of the methods that drop a fraction by an averaged score (el2n, grand)."""
    check_integer(p, "repeats", 1)
    check_fraction(p, "fraction")
    if p["drop"] not in DROP:
        raise ConfigError(f"prune.drop must be one of {DROP}, got {p['drop']!r}")


def scorer_settings(job: PruneJob) -> dict[str, Any]:
    """The scoring models' recipe, with the learner's choices where `prune.*` leaves them null."""
    p, learner = job.options, job.learner
    seed = p.get("seed")
    return {
        "model": plain(p.get("model") or learner.model),
        "optimizer": plain(p.get("optimizer") or learner.optimizer),
        "batch_size": int(p.get("batch_size") or learner.batch_size),
        "epochs": int(p.get("epochs", 0)),
        "seed": stream_seed(int(learner.seed if seed is None else seed), f"prune/{job.method}"),
    }


def new_model(settings: dict[str, Any], data: DataBundle, device: torch.device) -> nn.Module:
    return build_model(settings["model"], data.in_shape, data.num_classes).to(device)


def subset_train(data: DataBundle, positions: Tensor | np.ndarray) -> DataBundle:
    """The same data with the training split reduced to `positions` (sorted; dataset indices,
    labels and clean labels travel with the samples; `noisy` stays keyed by source index)."""
    positions = torch.as_tensor(positions, dtype=torch.long, device=data.train.targets.device)
    positions = torch.sort(positions).values
    clean = data.clean_targets[positions] if data.clean_targets is not None else None
    return dataclasses.replace(data, train=data.train.take(positions), clean_targets=clean)


def noisy_mask(data: DataBundle) -> np.ndarray:
    """Per position of `data.train`: was this label corrupted on purpose?"""
    if len(data.noisy) == 0:
        return np.zeros(len(data.train), dtype=bool)
    return data.noisy[data.train.indices].cpu().numpy().astype(bool)


def noise_stats(noisy: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """How the pruning met the injected label errors: precision = noisy among the dropped,
    recall = dropped among the noisy, and the noisy share of what is left to train on."""
    dropped = ~keep
    noisy_dropped = int((noisy & dropped).sum())
    n_dropped, n_noisy, n_kept = int(dropped.sum()), int(noisy.sum()), int(keep.sum())
    precision = noisy_dropped / n_dropped if n_dropped else float("nan")
    return {
        "n_noisy": n_noisy,
        "noisy_dropped": noisy_dropped,
        "precision": precision,
        "recall": noisy_dropped / n_noisy if n_noisy else float("nan"),
        "noisy_dropped_frac": precision,  # noisy share of the dropped samples
        "noisy_kept_frac": int((noisy & keep).sum()) / n_kept if n_kept else float("nan"),
        "noisy_frac_before": n_noisy / len(noisy) if len(noisy) else float("nan"),
    }


def drop_by_score(scores: np.ndarray, fraction: float, drop: str) -> np.ndarray:
    """Keep mask that removes `int(fraction * n)` samples: the lowest scores (`easy`, Paul et al.'s
    default) or the highest (`hard`). Ties go by position, so the result is deterministic."""
    n = len(scores)
    n_drop = int(fraction * n)
    order = np.lexsort((np.arange(n), scores if drop == "easy" else -scores))
    keep = np.ones(n, dtype=bool)
    keep[order[:n_drop]] = False
    return keep


def average_over_inits(
    job: PruneJob,
    data: DataBundle,
    device: torch.device,
    score: Callable[[nn.Module, Split, DataBundle, int], Tensor],
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Paul et al. 2021: train `prune.repeats` independently initialised models for
    `prune.epochs` epochs (0 = score at initialisation) on the whole training split, score every
    sample with each, and average. Returns (mean score, scores per repeat)."""
    settings = scorer_settings(job)
    per_repeat = []
    for r in range(int(job.options["repeats"])):
        seed = settings["seed"] + r
        with isolated(seed, device):
            model = new_model(settings, data, device)
            g = torch.Generator().manual_seed(seed)  # the repeat's own stream (rng.py)
            fit(model, data.train, data, settings, g, desc=f"{desc} model {r + 1}",
                progress=job.progress)  # fmt: skip
            per_repeat.append(score(model, data.train, data, job.eval_batch_size).cpu())
    stacked = torch.stack(per_repeat).double().numpy()
    return stacked.mean(0), stacked
