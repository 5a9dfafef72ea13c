"""Validation at start: a wrong value fails before any data is read, with one line that names
the key, the value, and what is allowed (and the closest valid name for a misspelt one).

Light to import: `saln-train` checks a command line with it before torch is imported
(saln_exp.cli), so the registries that need torch (datasets, models, selectors, pruning) are
imported by the checks that use them, after every check that needs none."""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from saln_exp import PROJECT_ROOT
from saln_exp.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from saln_exp.fit import Recipe
    from saln_exp.prune import PruneJob
    from saln_exp.trainer import LoopSettings

PRECISIONS = ("fp32", "bf16", "fp16")
SEED_LIMIT = 2**32


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """ "; did you mean <prefix>X?" for the choice X closest to a misspelt `word`, or "" when
    none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def unknown_key(key: str, siblings: Iterable[str]) -> str:
    """The one line for a dotted `key` that its parent does not have; `siblings`: the last parts
    of the parent's keys. Only last parts are compared: a shared `trainer.` makes any two alike."""
    parent, _, leaf = key.rpartition(".")
    names = sorted(str(s) for s in siblings)
    hint = did_you_mean(leaf, names, prefix=f"{parent}." if parent else "")
    where = f"the keys of {parent}" if parent else "the top-level keys"
    return f"unknown key {key}{hint} ({where}: {', '.join(names)})"


@functools.cache
def _metric_re() -> re.Pattern:
    from saln_exp.metrics import QUANTILES, RATIO_KEYS

    return re.compile(
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
    import torch

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
            siblings = [k.rsplit(".", 1)[1] for k in declared if k.rpartition(".")[0] == parent]
            raise ConfigError(unknown_key(key, siblings))


def validate(cfg: DictConfig) -> None:
    """Check every value the run depends on; raise ConfigError on the first wrong one. The checks
    against the registries import torch, so they come last: a wrong number fails fast."""
    check_known_keys(cfg)
    check_values(cfg)
    check_names(cfg)


def check_values(cfg: DictConfig) -> None:
    """Numbers and fixed choices: no registry, no torch."""
    seed = _get(cfg, "seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT
    ):  # numpy's global seed is 32-bit and unsigned
        raise ConfigError(f"seed must be an integer in [0, 2**32) or null, got {seed!r}")
    _number(cfg, "trainer.epochs", int, low=1)
    _number(cfg, "dataset.batch_size", int, low=1)
    _number(cfg, "dataset.val_fraction", float, low=0.0, high=1.0)
    _number(cfg, "dataset.label_noise.rate", float, low=0.0, high=1.0)
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
    if str(cfg.metric).startswith("val/") and _get(cfg, "dataset.val_fraction") == 0:
        raise ConfigError(
            f"metric={cfg.metric} needs a validation split; set dataset.val_fraction > 0"
        )


def check_names(cfg: DictConfig) -> None:
    """The device, and every name a registry must know: dataset, model, selector (and its
    options: its constructor checks them), label noise, metric, pruning."""
    from saln_exp import distributed
    from saln_exp.data import LOADERS
    from saln_exp.data.noise import NOISE_KINDS
    from saln_exp.models import model_class
    from saln_exp.prune import validate_prune
    from saln_exp.selectors import build_selector

    resolve_device(_get(cfg, "device"))
    if cfg.dataset.name not in LOADERS:
        raise ConfigError(
            f"dataset.name must be one of {sorted(LOADERS)}, got {cfg.dataset.name!r}"
            + did_you_mean(cfg.dataset.name, LOADERS)
        )
    model_class(cfg.model.name)
    build_selector(plain(cfg.selector), seed=0)
    # several processes: set up (WORLD), or about to be (torchrun's command line is checked first)
    several = distributed.WORLD.active or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several and cfg.selector.scope == "local" and cfg.selector.accumulate:
        raise ConfigError(
            "selector.scope=local with selector.accumulate=true: ranks would step at "
            "different times; use selector.scope=global"
        )
    if cfg.dataset.label_noise.kind not in NOISE_KINDS:
        raise ConfigError(
            f"dataset.label_noise.kind must be one of {NOISE_KINDS}, got {cfg.dataset.label_noise.kind!r}"
        )
    if not _metric_re().match(str(cfg.metric)):
        raise ConfigError(
            f"metric must look like test/acc, val/loss_q90 or ratio/acc, got {cfg.metric!r}"
        )
    validate_prune(plain(cfg.prune))


# -- the config as the plain values the code below train.py takes ----------------------------------
def plain(node: Any) -> Any:
    """A config node as plain dicts and lists, interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def learner_recipe(cfg: DictConfig) -> Recipe:
    """How the learner is trained: what a reference or scoring model defaults to."""
    from saln_exp.fit import Recipe  # imports torch: only a run needs it

    return Recipe(
        model=plain(cfg.model),
        optimizer=plain(cfg.optimizer),
        batch_size=int(cfg.dataset.batch_size),
        seed=int(cfg.seed),
    )


def prune_job(cfg: DictConfig) -> PruneJob:
    from saln_exp.prune import PruneJob

    return PruneJob(
        options=plain(cfg.prune),
        learner=learner_recipe(cfg),
        dataset=plain(cfg.dataset),
        cache_dir=str(cfg.paths.cache_dir),
        eval_batch_size=int(cfg.eval.batch_size),
        progress=bool(cfg.trainer.get("progress", False)),
    )


def loop_settings(cfg: DictConfig) -> LoopSettings:
    """What the training loop reads, read once, typed, with their defaults in one place."""
    from saln_exp.trainer import LoopSettings  # the loop's module is heavy; only a run needs it

    trainer, every = cfg.trainer, cfg.trainer.get("checkpoint_every_steps")
    subset = cfg.eval.get("train_subset")
    batch_size = int(cfg.dataset.batch_size)
    return LoopSettings(
        epochs=int(trainer.epochs),
        batch_size=batch_size,
        candidate_batch_size=int(cfg.selector.get("candidate_batch_size") or batch_size),
        precision=str(trainer.get("precision", "fp32")),
        compile=bool(trainer.get("compile")),
        channels_last=bool(trainer.get("channels_last")),
        progress_bar=bool(trainer.get("progress", True)),
        log_every_steps=int(trainer.get("log_every_steps", 10)),
        checkpoint=bool(trainer.get("checkpoint", True)),
        checkpoint_every_steps=int(every) if every else None,
        example_batch=int(trainer.get("example_batch", 0)),
        eval_batch_size=int(cfg.eval.batch_size),
        train_subset=None if subset is None else int(subset),
        seed=int(cfg.seed),
        split_seed=int(cfg.dataset.split_seed),
        label_noise=cfg.dataset.label_noise.rate > 0,
        selector_name=str(cfg.selector.name),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.scheduler),
        learner=learner_recipe(cfg),
        dataset=plain(cfg.dataset),
        cache_dir=str(cfg.paths.cache_dir),
        config=plain(cfg),
    )
