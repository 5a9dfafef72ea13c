"""The models' registry. A model is an `nn.Module` class taking (in_channels, num_classes,
image_size, **its YAML keys), with `forward_features(x)` (penultimate activations), `classifier`
(the last linear layer) and `min_size` (the smallest input side it takes); decorating it with
`register_model(name)` makes it `model=<name>`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from saln_exp.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    return MODELS.decorator(name)
