"""Seeded synthetic images: class prototypes plus Gaussian noise, any shape and class count.

Learnable (prototypes differ) but not trivial (noise), so selectors and metrics behave as on real
data. With `like=<dataset>` it takes that dataset's shape and class count: the smoke stand-in.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from saln_exp.data.base import SourceData
from saln_exp.errors import ConfigError

# channels, image size, classes of every real dataset, for stand-ins
SHAPES = {
    "digits": (1, 32, 10),
    "mnist": (1, 32, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "pets": (3, 224, 37),
}


def shape_of(cfg: DictConfig) -> tuple[int, int, int]:
    if cfg.get("like"):
        if cfg.like not in SHAPES:
            raise ConfigError(f"dataset.like must be one of {sorted(SHAPES)}, got {cfg.like!r}")
        return SHAPES[cfg.like]
    return int(cfg.channels), int(cfg.image_size), int(cfg.num_classes)


def load(cfg: DictConfig, data_dir: str) -> SourceData:
    channels, size, classes = shape_of(cfg)
    g = torch.Generator().manual_seed(int(cfg.split_seed))
    prototypes = torch.rand(classes, channels, size, size, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        y = y[torch.randperm(n, generator=g)]
        noise = torch.randn(n, channels, size, size, generator=g) * float(cfg.noise) * 0.25
        return (prototypes[y] + noise).clamp_(0.0, 1.0), y

    train_x, train_y = draw(int(cfg.n_train))
    test_x, test_y = draw(int(cfg.n_test))
    return SourceData(
        train_images=train_x,
        train_targets=train_y,
        test_images=test_x,
        test_targets=test_y,
        num_classes=classes,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )
