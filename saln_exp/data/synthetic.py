"""Seeded synthetic images: class prototypes plus Gaussian noise, any shape and class count.

Learnable (prototypes differ) but not trivial (noise), so selectors and metrics behave as on real
data. With `like=<dataset>` it takes that dataset's shape and class count (as the one registry,
`saln_exp.data.DATASETS`, declares them): the smoke stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from saln_exp import rng
from saln_exp.data.base import SourceData, register_dataset
from saln_exp.errors import ConfigError


def shape_of(options: Mapping[str, Any], data_dir: str = "") -> tuple[int, int, int]:
    """(channels, side, classes): those of `like` (a dataset with a fixed shape), else the
    config's own."""
    if options.get("like"):
        from saln_exp.data import fixed_shapes  # the registry imports this module

        shapes = fixed_shapes()
        if options["like"] not in shapes:
            raise ConfigError(f"dataset.like must be one of {sorted(shapes)}, got {options['like']!r}")
        return shapes[options["like"]]
    return int(options["channels"]), int(options["image_size"]), int(options["num_classes"])


@register_dataset("synthetic", shape=shape_of)
def load(options: Mapping[str, Any], data_dir: str, cache_dir: str | None = None) -> SourceData:
    channels, size, classes = shape_of(options)
    g = rng.generator(int(options["split_seed"]), "synthetic_images")
    prototypes = torch.rand(classes, channels, size, size, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        y = y[torch.randperm(n, generator=g)]
        noise = torch.randn(n, channels, size, size, generator=g) * float(options["noise"]) * 0.25
        return (prototypes[y] + noise).clamp_(0.0, 1.0), y

    train_x, train_y = draw(int(options["n_train"]))
    test_x, test_y = draw(int(options["n_test"]))
    return SourceData(
        train_images=train_x,
        train_targets=train_y,
        test_images=test_x,
        test_targets=test_y,
        num_classes=classes,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )
