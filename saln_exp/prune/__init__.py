"""Dataset-level pruning before training (the `prune` config group), composable with any online
selector: the training split is reduced once, then the selector works batch by batch as usual.

`prune_dataset` is the only entry point; `prune=none` returns the data untouched. Methods, one
module each registering itself (`register_method` in common.py, as selectors, datasets and models
register themselves: adding one is one module and one YAML in conf/prune/), return a keep mask
over the training split (`PruneResult`):

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saln_exp.cache import StaleEntry, dataset_content, fingerprint, load_or_compute, plain
from saln_exp.data.base import DataBundle
from saln_exp.errors import ConfigError
from saln_exp.prune.common import (
    METHODS,
    PruneJob,
    PruneResult,
    check_integer,
    noise_stats,
    noisy_mask,
    register_method,
    scorer_settings,
    subset_train,
)
from saln_exp.registry import import_all
from saln_exp.rundir import LABEL_NOISE, PRUNE, PRUNE_SCORES, save_npz, write_json

import_all(__name__, __path__)  # every method module registers itself

__all__ = [
    "METHODS",
    "PruneJob",
    "prune_dataset",
    "register_method",
    "shrink_for_smoke",
    "subset_train",
    "validate_prune",
    "write_label_noise",
]

log = logging.getLogger(__name__)


def shrink_for_smoke(p: dict[str, Any]) -> None:
    """`smoke=true`: one epoch for the scoring models and the fewest of them the method allows
    (one repeat for el2n / grand, two folds for confident learning). Edits the `prune` group's
    keys (a plain dict) in place."""
    if p.get("name", "none") == "none":
        return
    p["epochs"] = min(int(p["epochs"]), 1)
    if "repeats" in p:
        p["repeats"] = 1
    if "folds" in p:
        p["folds"] = 2


def validate_prune(p: Mapping[str, Any]) -> None:
    """One clear line for a wrong `prune.*` value (`p`: the `prune` group's keys), before any
    scoring model is trained."""
    name = p.get("name", "none")
    if name == "none":
        return
    if name not in METHODS:
        raise ConfigError(f"prune.name must be none or one of {sorted(METHODS)}, got {name!r}")
    method = METHODS[name]
    check_integer(p, "epochs", method.min_epochs)
    if p.get("seed") is not None:
        check_integer(p, "seed", 0)
    if p.get("batch_size") is not None:
        check_integer(p, "batch_size", 1)
    method.check(p)


def write_label_noise(dataset: Mapping[str, Any], data: DataBundle, run_dir: Path) -> Path | None:
    """`label_noise.json`: which training samples were corrupted on purpose (dataset indices), with
    their given (noisy) and clean labels. Written for every run with label noise on; `dataset`
    is the dataset group's keys."""
    if data.clean_targets is None:
        return None
    noisy = noisy_mask(data)
    positions = np.flatnonzero(noisy)
    noise = dataset["label_noise"]
    path = Path(run_dir) / LABEL_NOISE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        path,
        {
            "rate": float(noise["rate"]),
            "kind": str(noise["kind"]),
            "split_seed": int(dataset["split_seed"]),
            "n_train": len(data.train),
            "n_noisy": len(positions),
            "index": data.train.indices.cpu().numpy()[positions].tolist(),
            "noisy_label": data.train.targets.cpu().numpy()[positions].tolist(),
            "clean_label": data.clean_targets.cpu().numpy()[positions].tolist(),
        },
    )
    return path


def prune_dataset(
    job: PruneJob, data: DataBundle, device: torch.device, run_dir: Path
) -> tuple[DataBundle, dict[str, Any]]:
    """Return the data with a pruned training split and numbers worth putting in the summary."""
    write_label_noise(job.dataset, data, run_dir)
    name = job.method
    if name == "none":
        return data, {}
    validate_prune(job.options)
    start = time.perf_counter()
    result, cached, score_seconds = cached_result(job, data, device)
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
        "settings": plain(job.options),
        "scorer": scorer_settings(job),
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
    save_npz(
        run_dir / PRUNE_SCORES,
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
def cache_key(job: PruneJob, data: DataBundle, device: torch.device) -> str:
    """Everything the scores depend on: the training split's content (cache.dataset_content),
    the method's options, the scoring recipe and the device type."""
    recipe = {
        "prune": plain(job.options),
        "scorer": scorer_settings(job),
        "device": device.type,
    }
    return fingerprint(dataset_content(job.dataset, data.train), recipe)


def cached_result(
    job: PruneJob, data: DataBundle, device: torch.device
) -> tuple[PruneResult, bool, float]:
    """(the method's result, whether it came from `paths.cache_dir/prune/`, the seconds its
    scoring took when it was computed). The cache is used when `prune.cache` is on."""
    method = METHODS[job.method].prune

    def compute() -> tuple[PruneResult, float]:
        start = time.perf_counter()
        result = method(job, data, device)
        return result, time.perf_counter() - start

    if not job.options.get("cache", True):
        return *compute(), False
    path = Path(job.cache_dir) / "prune" / f"{job.method}-{cache_key(job, data, device)}.npz"
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
        path, f"prune={job.method} scores", load, compute, save
    )
    return result, from_cache, seconds
