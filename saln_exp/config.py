"""Validation at start: a wrong value fails before any data is read, with one line that names
the key, the value, and what is allowed. Hydra reports unknown group choices itself."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence
from typing import Any

import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from saln_exp import PROJECT_ROOT
from saln_exp.data import LOADERS
from saln_exp.data.noise import NOISE_KINDS
from saln_exp.errors import ConfigError
from saln_exp.metrics import QUANTILES, RATIO_KEYS
from saln_exp.prune import validate_prune

PRECISIONS = ("fp32", "bf16", "fp16")
SEED_LIMIT = 2**32
METRIC_RE = re.compile(
    r"^(train|val|test)/(acc|loss_(mean|best|worst|" + "|".join(QUANTILES) + r"))$"
    r"|^ratio/(" + "|".join(RATIO_KEYS) + r")$"
)


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _number(cfg: DictConfig, key: str, kind: type, low: float | None = None, high: float | None = None,
            high_open: bool = True, allow_none: bool = False) -> None:  # fmt: skip
    value = _get(cfg, key)
    if value is None and allow_none:
        return
    rng = ""
    if low is not None or high is not None:
        rng = f" in [{low}, {high}{')' if high_open else ']'}" if high is not None else f" >= {low}"
    wanted = f"{'an integer' if kind is int else 'a number'}{rng}"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise ConfigError(f"{key} must be {wanted}, got {value!r}")
    if (low is not None and value < low) or (
        high is not None and (value >= high if high_open else value > high)
    ):
        raise ConfigError(f"{key} must be {wanted}, got {value!r}")


def resolve_device(requested: str) -> torch.device:
    """`auto` picks CUDA when present; asking for a device that is not there is an error."""
    requested = str(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {requested!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={requested} but CUDA is not available here; use device=auto or device=cpu"
        )
    return device


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `saln-train <overrides>` would run, composed in-process (the benchmark, tests,
    notebooks): the same conf/ tree and defaults, without Hydra's app. `paths.output_dir` is
    Hydra's run directory there, so the caller sets it."""
    GlobalHydra.instance().clear()  # a process composes many configs; Hydra allows one at a time
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# groups whose keys are all declared in conf/ (selector options are checked by each selector)
CHECKED_GROUPS = ("trainer", "dataset", "eval", "model", "optimizer", "scheduler")
GLOBAL_FILES = ("config.yaml", "experiment/*.yaml", "debug/*.yaml", "hparams_search/*.yaml")


def _dotted(node: Any, prefix: str) -> set[str]:
    if not isinstance(node, dict):
        return set()
    keys = set()
    for key, value in node.items():
        if key == "defaults":
            continue
        keys.add(prefix + str(key))
        keys |= _dotted(value, f"{prefix}{key}.")
    return keys


@functools.cache
def declared_keys() -> frozenset[str]:
    """Every dotted key of the checked groups that some file in conf/ declares."""
    conf = PROJECT_ROOT / "conf"
    keys: set[str] = set()
    for pattern in GLOBAL_FILES:
        for path in conf.glob(pattern):
            keys |= _dotted(yaml.safe_load(path.read_text()) or {}, "")
    for group in CHECKED_GROUPS:
        for path in (conf / group).glob("*.yaml"):
            keys |= _dotted(yaml.safe_load(path.read_text()) or {}, f"{group}.")
    return frozenset(k for k in keys if k.split(".")[0] in CHECKED_GROUPS)


def check_known_keys(cfg: DictConfig) -> None:
    """A key added with `+group.key=...` that no config file declares is a typo: name the
    closest declared key (Hydra itself refuses unknown keys only without the `+`)."""
    declared = declared_keys()
    container = OmegaConf.to_container(cfg, resolve=False)
    for group in CHECKED_GROUPS:
        for key in sorted(_dotted(container.get(group), f"{group}.")):
            if key in declared:
                continue
            parent = key.rsplit(".", 1)[0]
            if parent != group and parent not in declared:
                continue  # inside a node that is already reported
            siblings = [k for k in declared if "." in k and k.rsplit(".", 1)[0] == parent]
            close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown key {key}{hint} (the keys of {parent}: "
                              f"{', '.join(sorted(k.rsplit('.', 1)[1] for k in siblings))})")  # fmt: skip


def validate(cfg: DictConfig) -> None:
    """Check every value the run depends on; raise ConfigError on the first wrong one."""
    check_known_keys(cfg)
    seed = _get(cfg, "seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT
    ):  # numpy's global seed is 32-bit and unsigned
        raise ConfigError(f"seed must be an integer in [0, 2**32) or null, got {seed!r}")
    resolve_device(_get(cfg, "device"))
    if cfg.dataset.name not in LOADERS:
        raise ConfigError(
            f"dataset.name must be one of {sorted(LOADERS)}, got {cfg.dataset.name!r}"
        )
    _number(cfg, "trainer.epochs", int, low=1)
    _number(cfg, "dataset.batch_size", int, low=1)
    _number(cfg, "dataset.val_fraction", float, low=0.0, high=1.0)
    _number(cfg, "dataset.label_noise.rate", float, low=0.0, high=1.0)
    if cfg.dataset.label_noise.kind not in NOISE_KINDS:
        raise ConfigError(
            f"dataset.label_noise.kind must be one of {NOISE_KINDS}, got {cfg.dataset.label_noise.kind!r}"
        )
    _number(cfg, "selector.filter_ratio", float, low=0.0, high=1.0)
    _number(cfg, "selector.candidate_batch_size", int, low=1, allow_none=True)
    _number(cfg, "selector.min_keep", int, low=1)
    _number(cfg, "optimizer.lr", float)
    if _get(cfg, "optimizer.lr") <= 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {_get(cfg, 'optimizer.lr')!r}")
    _number(cfg, "eval.batch_size", int, low=1)
    _number(cfg, "eval.train_subset", int, low=1, allow_none=True)
    _number(cfg, "eval.target_acc", float, low=0.0, high=1.0, high_open=False, allow_none=True)
    _number(cfg, "trainer.checkpoint_every_steps", int, low=1, allow_none=True)
    if cfg.trainer.precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision must be one of {PRECISIONS}, got {cfg.trainer.precision!r}"
        )
    if not METRIC_RE.match(str(cfg.metric)):
        raise ConfigError(
            f"metric must look like test/acc, val/loss_q90 or ratio/acc, got {cfg.metric!r}"
        )
    if cfg.metric.startswith("val/") and _get(cfg, "dataset.val_fraction") == 0:
        raise ConfigError(
            f"metric={cfg.metric} needs a validation split; set dataset.val_fraction > 0"
        )
    validate_prune(cfg)
