"""Models: one short file per family, each registering itself by name (`register_model` in
base.py, as selectors and datasets register themselves). `build_model` is the only entry point.
Adding a model: one module in this package and one YAML in conf/model/.

Every model exposes `forward_features(x)` (penultimate activations) and `classifier` (the last
linear layer): SALN's learner features and the final-layer figures need both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from saln_exp.errors import ConfigError
from saln_exp.models.base import MODELS, register_model
from saln_exp.registry import import_all

import_all(__name__, __path__)  # every model module registers itself

__all__ = ["MODELS", "build_model", "check_input", "model_class", "register_model"]


def model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ConfigError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name]


def check_input(name: str, in_shape: tuple[int, int, int]) -> None:
    _channels, height, width = in_shape
    cls = model_class(name)
    if min(height, width) < cls.min_size:
        raise ConfigError(
            f"model={name} needs inputs of at least {cls.min_size}x{cls.min_size}, the dataset gives "
            f"{height}x{width}; raise dataset.image_size or pick model=fcnet"
        )


def build_model(
    options: Mapping[str, Any], in_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    """The model `options["name"]`, its other keys (the `model` config group's) as constructor
    keywords. Input channels and class count come from the data, never from the model config."""
    check_input(options["name"], in_shape)
    channels, size, _ = in_shape
    extra = {k: v for k, v in options.items() if k != "name"}
    return model_class(options["name"])(channels, num_classes, size, **extra)
