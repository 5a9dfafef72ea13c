"""What the runner finds by name: selectors, datasets, models and pruning methods, one registry
each, filled the same way.

Defining a thing in a module of its package registers it (a `Selector` subclass by its `name`;
a dataset, model or pruning method by its package's `register_*` decorator), and the package
imports every one of its modules (`import_all`). So adding any of them is one module in its
package and one YAML in its conf/ group; no list elsewhere names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Name -> thing. The first registration of a name wins (a module imported twice, or a
    subclass that keeps its parent's name, does not replace it)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, thing: T) -> T:
        self.setdefault(name, thing)
        return thing

    def decorator(self, name: str, wrap: Callable[[T], object] | None = None) -> Callable:
        """`@decorator(name)` registers what it decorates (or `wrap(it)`) and returns it."""

        def add(thing):
            self.register(name, thing if wrap is None else wrap(thing))
            return thing

        return add


def import_all(package: str, path: Iterable[str]) -> None:
    """Import every module of `package` (its `__name__` and `__path__`): each registers itself."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")
