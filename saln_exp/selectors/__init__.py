"""Selectors: one module per selector, registered by name. `build_selector` is the only entry point.

To add one: write `saln_exp/selectors/<name>.py` with a `Selector` subclass (set `name` and `style`,
implement `choose`) and `conf/selector/<name>.yaml`. Every module of this package is imported
below, and defining the subclass registers it (`base.REGISTRY`); nothing else names it.
"""

from __future__ import annotations

import importlib
import pkgutil

from omegaconf import DictConfig, OmegaConf

from saln_exp.errors import ConfigError
from saln_exp.selectors.base import (
    REGISTRY,
    Batch,
    BatchView,
    RunContext,
    Selection,
    Selector,
    ViewSources,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

SELECTORS: dict[str, type[Selector]] = REGISTRY  # live: a subclass defined later registers too

__all__ = [
    "SELECTORS",
    "Batch",
    "BatchView",
    "RunContext",
    "Selection",
    "Selector",
    "ViewSources",
    "build_selector",
    "selector_class",
]


def selector_class(name: str) -> type[Selector]:
    if name not in SELECTORS:
        raise ConfigError(f"selector.name={name!r} is not a selector; one of {sorted(SELECTORS)}")
    return SELECTORS[name]


def build_selector(cfg: DictConfig, seed: int) -> Selector:
    options = OmegaConf.to_container(cfg, resolve=True)
    return selector_class(options.pop("name"))(seed=seed, **options)
