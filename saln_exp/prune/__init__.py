"""Dataset-level pruning before training (the `prune` config group), composable with any online
selector: the training split is reduced once, then the selector works batch by batch as usual.

`prune_dataset` is the only entry point; `prune=none` returns the data untouched. Methods, one
module each, return a keep mask over the training split (`PruneResult`):

- `confident_learning`: cleanlab's `find_label_issues` on K-fold out-of-sample probabilities
- `el2n`, `grand`: Paul et al. 2021's scores averaged over initialisations; drop a fraction
- `forgetting`: Toneva et al. 2019; drop the unforgettable samples

Every run writes `label_noise.json` when labels were corrupted on purpose (whatever the prune
choice), and a pruned run writes `prune.json` (settings, counts, dropped dataset indices,
precision / recall against the injected noise) and `prune_scores.npz` (index, score, keep, and
each method's per-sample arrays). Scores are cached under `paths.cache_dir/prune/` by a hash of
everything that determines them, so a sweep over selectors scores the data once.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from saln_exp.cache import StaleEntry, dataset_content, fingerprint, load_or_compute
from saln_exp.data.base import DataBundle
from saln_exp.errors import ConfigError
from saln_exp.prune import confident_learning, el2n, forgetting, grand
from saln_exp.prune.common import (
    PruneResult,
    noise_stats,
    noisy_mask,
    scorer_settings,
    subset_train,
)
from saln_exp.rundir import LABEL_NOISE, PRUNE, write_json

__all__ = [
    "METHODS",
    "prune_dataset",
    "shrink_for_smoke",
    "subset_train",
    "validate_prune",
    "write_label_noise",
]

log = logging.getLogger(__name__)

METHODS: dict[str, Callable[[DictConfig, DataBundle, torch.device], PruneResult]] = {
    "confident_learning": confident_learning.prune,
    "el2n": el2n.prune,
    "grand": grand.prune,
    "forgetting": forgetting.prune,
}
DROP = ("easy", "hard")


def shrink_for_smoke(p: DictConfig) -> None:
    """`smoke=true`: one epoch for the scoring models and the fewest of them the method allows
    (one repeat for el2n / grand, two folds for confident learning). Edits `cfg.prune` in place."""
    if p.get("name", "none") == "none":
        return
    p.epochs = min(int(p.epochs), 1)
    if "repeats" in p:
        p.repeats = 1
    if "folds" in p:
        p.folds = 2


def validate_prune(cfg: DictConfig) -> None:
    """One clear line for a wrong `prune.*` value, before any scoring model is trained."""
    p = cfg.prune
    name = p.get("name", "none")
    if name == "none":
        return
    if name not in METHODS:
        raise ConfigError(f"prune.name must be none or one of {sorted(METHODS)}, got {name!r}")

    def integer(key: str, low: int) -> None:
        value = p.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"prune.{key} must be an integer >= {low}, got {value!r}")

    def fraction(key: str, allow_none: bool = False) -> None:
        value = p.get(key)
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ConfigError(f"prune.{key} must be a number in [0, 1), got {value!r}")

    integer("epochs", 0 if name in ("el2n", "grand") else 1)
    if p.get("seed") is not None:
        integer("seed", 0)
    if p.get("batch_size") is not None:
        integer("batch_size", 1)
    if name == "confident_learning":
        integer("folds", 2)
        integer("min_examples_per_class", 0)
        if p.filter_by not in confident_learning.FILTER_BY:
            raise ConfigError(
                f"prune.filter_by must be one of {confident_learning.FILTER_BY}, got {p.filter_by!r}"
            )
        if p.quality not in confident_learning.QUALITY_METHODS:
            raise ConfigError(
                f"prune.quality must be one of {confident_learning.QUALITY_METHODS}, got {p.quality!r}"
            )
        frac_noise = p.get("frac_noise")
        if (
            isinstance(frac_noise, bool)
            or not isinstance(frac_noise, int | float)
            or not 0 < frac_noise <= 1
        ):
            raise ConfigError(f"prune.frac_noise must be a number in (0, 1], got {frac_noise!r}")
    if name in ("el2n", "grand"):
        integer("repeats", 1)
        fraction("fraction")
        if p.drop not in DROP:
            raise ConfigError(f"prune.drop must be one of {DROP}, got {p.drop!r}")
    if name == "forgetting":
        fraction("fraction", allow_none=True)


def write_label_noise(cfg: DictConfig, data: DataBundle, run_dir: Path) -> Path | None:
    """`label_noise.json`: which training samples were corrupted on purpose (dataset indices), with
    their given (noisy) and clean labels. Written for every run with label noise on."""
    if data.clean_targets is None:
        return None
    noisy = noisy_mask(data)
    positions = np.flatnonzero(noisy)
    noise = cfg.dataset.label_noise
    path = Path(run_dir) / LABEL_NOISE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        path,
        {
            "rate": float(noise.rate),
            "kind": str(noise.kind),
            "split_seed": int(cfg.dataset.split_seed),
            "n_train": len(data.train),
            "n_noisy": len(positions),
            "index": data.train.indices.cpu().numpy()[positions].tolist(),
            "noisy_label": data.train.targets.cpu().numpy()[positions].tolist(),
            "clean_label": data.clean_targets.cpu().numpy()[positions].tolist(),
        },
    )
    return path


def prune_dataset(
    cfg: DictConfig, data: DataBundle, device: torch.device, run_dir: Path
) -> tuple[DataBundle, dict[str, Any]]:
    """Return the data with a pruned training split and numbers worth putting in the summary."""
    write_label_noise(cfg, data, run_dir)
    name = cfg.prune.get("name", "none")
    if name == "none":
        return data, {}
    validate_prune(cfg)
    start = time.perf_counter()
    result, cached, score_seconds = cached_result(cfg, data, device)
    seconds = time.perf_counter() - start
    keep = np.asarray(result.keep, dtype=bool)
    if not keep.any():
        raise ConfigError(f"prune={name} dropped every training sample; relax its prune.* options")
    noisy = noisy_mask(data)
    index = data.train.indices.cpu().numpy()
    noise = noise_stats(noisy, keep) if data.clean_targets is not None else {}
    n = len(keep)
    record_file = {
        "method": name,
        "settings": OmegaConf.to_container(cfg.prune, resolve=True),
        "scorer": scorer_settings(cfg),
        "n_before": n,
        "kept": int(keep.sum()),
        "dropped": int(n - keep.sum()),
        "kept_frac": float(keep.mean()),
        "dropped_index": index[~keep].tolist(),
        "noise": noise,
        "info": result.info,
        "time_s": seconds,
        "score_time_s": score_seconds,
        "cached": cached,
    }
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / PRUNE, record_file)
    np.savez_compressed(
        run_dir / "prune_scores.npz",
        index=index,
        score=np.asarray(result.scores, dtype=np.float64),
        keep=keep,
        noisy=noisy,
        **result.arrays,
    )
    record: dict[str, Any] = {
        "prune/method": name,
        "prune/kept": record_file["kept"],
        "prune/dropped": record_file["dropped"],
        "prune/kept_frac": record_file["kept_frac"],
        "prune/time_s": seconds,
        "prune/score_time_s": score_seconds,
        "prune/cached": cached,
    }
    for key in ("noisy_dropped_frac", "noisy_kept_frac", "precision", "recall"):
        if key in noise:
            record[f"prune/{key}"] = noise[key]
    log.info(
        "prune=%s: kept %d of %d training samples (%.1f s%s)%s", name, record["prune/kept"], n,
        seconds, ", cached scores" if cached else "",
        f"; noisy labels: precision {noise['precision']:.3f}, recall {noise['recall']:.3f}"
        if noise and not math.isnan(noise["recall"]) else "",
    )  # fmt: skip
    return subset_train(data, np.flatnonzero(keep)), record


# -- cache ------------------------------------------------------------------------------------------
def cache_key(cfg: DictConfig, data: DataBundle, device: torch.device) -> str:
    """Everything the scores depend on: the training split's content (cache.dataset_content),
    the method's options, the scoring recipe and the device type."""
    recipe = {
        "prune": OmegaConf.to_container(cfg.prune, resolve=True),
        "scorer": scorer_settings(cfg),
        "device": device.type,
    }
    return fingerprint(dataset_content(cfg.dataset, data.train), recipe)


def cached_result(
    cfg: DictConfig, data: DataBundle, device: torch.device
) -> tuple[PruneResult, bool, float]:
    """(the method's result, whether it came from `paths.cache_dir/prune/`, the seconds its
    scoring took when it was computed). The cache is used when `prune.cache` is on."""
    method = METHODS[cfg.prune.name]

    def compute() -> tuple[PruneResult, float]:
        start = time.perf_counter()
        result = method(cfg, data, device)
        return result, time.perf_counter() - start

    if not cfg.prune.get("cache", True):
        return *compute(), False
    path = (
        Path(cfg.paths.cache_dir) / "prune" / f"{cfg.prune.name}-{cache_key(cfg, data, device)}.npz"
    )
    index = data.train.indices.cpu().numpy()
    reserved = ("index", "keep", "scores", "info", "seconds")

    def load(file: Path) -> tuple[PruneResult, float]:
        with np.load(file, allow_pickle=False) as saved:
            if not np.array_equal(saved["index"], index):
                raise StaleEntry("scores of another training split")
            arrays = {k: saved[k] for k in saved.files if k not in reserved}
            info = json.loads(str(saved["info"]))
            seconds = float(saved["seconds"]) if "seconds" in saved.files else math.nan
            return PruneResult(saved["keep"], saved["scores"], arrays, info), seconds

    def save(entry: tuple[PruneResult, float], tmp: Path) -> None:
        result, seconds = entry
        with tmp.open("wb") as fh:  # a file object: numpy would append .npz to a path
            np.savez_compressed(
                fh, index=index, keep=result.keep, scores=result.scores, seconds=seconds,
                info=np.array(json.dumps(result.info)), **result.arrays,
            )  # fmt: skip

    (result, seconds), from_cache = load_or_compute(
        path, f"prune={cfg.prune.name} scores", load, compute, save
    )
    return result, from_cache, seconds
