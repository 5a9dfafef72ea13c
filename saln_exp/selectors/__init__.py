"""Selectors: one module per selector, registered by name. The runner and your own loop build
them through the public API, `saln_exp.selection.make` (with their YAML defaults);
`build_selector` makes one from plain options.

To add one: write `saln_exp/selectors/<name>.py` with a `Selector` subclass (set `name` and `style`,
implement `choose`) and `conf/selector/<name>.yaml`. Every module of this package is imported
below, and defining the subclass registers it (`base.REGISTRY`); nothing else names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saln_exp.errors import ConfigError
from saln_exp.registry import import_all
from saln_exp.selectors.base import (
    REGISTRY,
    Batch,
    BatchView,
    RunContext,
    Selection,
    Selector,
    ViewSources,
)

import_all(__name__, __path__)  # defining a Selector subclass registers it

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


def build_selector(options: Mapping[str, Any], seed: int) -> Selector:
    """The selector `options["name"]` with the other keys (the `selector` config group's, as
    plain values) as its constructor keywords."""
    options = dict(options)
    return selector_class(options.pop("name"))(seed=seed, **options)
