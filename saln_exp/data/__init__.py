"""Datasets: one module per family, registered once here by name with their shape.

`build_data` is the only entry point that reads data; `shape_of` says what a dataset config gives
the model (channels, side, classes) without reading it, for smoke stand-ins and `synthetic`'s
`like`. Adding a dataset: one module, one line in DATASETS, one YAML in conf/dataset/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from saln_exp.data import (
    cifar,
    cinic10,
    digits,
    fashion_mnist,
    imagefolder,
    mnist,
    pets,
    svhn,
    synthetic,
)
from saln_exp.data.base import BatchPipeline, DataBundle, SourceData, Split, assemble
from saln_exp.errors import ConfigError

Shape = tuple[int, int, int]  # channels, side, classes


@dataclass(frozen=True)
class Dataset:
    """How to read a dataset, `load(cfg, data_dir, cache_dir) -> SourceData`, and its shape:
    fixed (channels, side, classes), the side overridden by `dataset.image_size` where a config
    sets one, or `shape(cfg, data_dir)` when the config and files decide (synthetic, your folder)."""

    load: Callable[[DictConfig, str, str | None], SourceData]
    shape: Shape | Callable[[DictConfig, str], Shape]


DATASETS: dict[str, Dataset] = {
    "digits": Dataset(digits.load, (1, 32, 10)),
    "synthetic": Dataset(synthetic.load, synthetic.shape_of),
    "mnist": Dataset(mnist.load, (1, 32, 10)),
    "fashion_mnist": Dataset(fashion_mnist.load, (1, 28, 10)),
    "svhn": Dataset(svhn.load, (3, 32, 10)),
    "cifar10": Dataset(cifar.load, (3, 32, 10)),
    "cifar100": Dataset(cifar.load, (3, 32, 100)),
    "cinic10": Dataset(cinic10.load, (3, 32, 10)),
    "pets": Dataset(pets.load, (3, 224, 37)),
    "imagefolder": Dataset(imagefolder.load, imagefolder.shape_of),
}

# name -> load, for validation and tests (a view of DATASETS, not a second registry)
LOADERS = {name: spec.load for name, spec in DATASETS.items()}

__all__ = [
    "DATASETS",
    "LOADERS",
    "BatchPipeline",
    "DataBundle",
    "Dataset",
    "SourceData",
    "Split",
    "build_data",
    "fixed_shapes",
    "shape_of",
]


def _spec(name: str, key: str = "dataset.name") -> Dataset:
    if name not in DATASETS:
        raise ConfigError(f"{key} must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]


def shape_of(cfg: DictConfig, data_dir: str = "") -> Shape:
    """(channels, side, classes) the model sees for the dataset config `cfg` (the `dataset`
    group); an unknown name is a ConfigError, never a default shape."""
    spec = _spec(str(cfg.name))
    if callable(spec.shape):
        return spec.shape(cfg, data_dir)
    channels, size, classes = spec.shape
    return channels, int(cfg.get("image_size") or size), classes


def fixed_shapes() -> dict[str, Shape]:
    """The datasets whose shape needs no config or files, at their default side."""
    return {name: spec.shape for name, spec in DATASETS.items() if not callable(spec.shape)}


def build_data(
    cfg: DictConfig, paths: DictConfig, device: torch.device | str = "cpu"
) -> DataBundle:
    """Read `cfg.name` from `paths.data_dir`, split, corrupt labels if asked, move to `device`."""
    cache_dir = paths.get("cache_dir")
    source = _spec(str(cfg.name)).load(
        cfg, str(paths.data_dir), str(cache_dir) if cache_dir else None
    )
    noise = cfg.get("label_noise") or {}
    return assemble(
        cfg.name,
        source,
        val_fraction=float(cfg.val_fraction),
        split_seed=int(cfg.split_seed),
        label_noise_rate=float(noise.get("rate", 0.0)),
        label_noise_kind=str(noise.get("kind", "symmetric")),
        device=device,
    )
