"""Datasets: one module per family, each registering itself by name with its shape
(`register_dataset` in base.py, as selectors and models register themselves).

`build_data` is the only entry point that reads data; `shape_of` says what a dataset config gives
the model (channels, side, classes) without reading it, for smoke stand-ins and `synthetic`'s
`like`. Adding a dataset: one module in this package and one YAML in conf/dataset/.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from saln_exp.data.base import (
    DATASETS,
    BatchPipeline,
    DataBundle,
    Dataset,
    Shape,
    SourceData,
    Split,
    assemble,
    register_dataset,
)
from saln_exp.errors import ConfigError
from saln_exp.registry import import_all

import_all(__name__, __path__)  # every dataset module registers itself

# name -> load, for validation and tests (a view of DATASETS, not a second registry)
LOADERS = {name: spec.load for name, spec in DATASETS.items()}

__all__ = [
    "DATASETS",
    "LOADERS",
    "BatchPipeline",
    "DataBundle",
    "Dataset",
    "Shape",
    "SourceData",
    "Split",
    "build_data",
    "fixed_shapes",
    "register_dataset",
    "shape_of",
]


def _spec(name: str, key: str = "dataset.name") -> Dataset:
    if name not in DATASETS:
        raise ConfigError(f"{key} must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]


def shape_of(options: Mapping[str, Any], data_dir: str = "") -> Shape:
    """(channels, side, classes) the model sees for the dataset `options` (the `dataset`
    group's keys); an unknown name is a ConfigError, never a default shape."""
    spec = _spec(str(options["name"]))
    if callable(spec.shape):
        return spec.shape(options, data_dir)
    channels, size, classes = spec.shape
    return channels, int(options.get("image_size") or size), classes


def fixed_shapes() -> dict[str, Shape]:
    """The datasets whose shape needs no config or files, at their default side."""
    return {name: spec.shape for name, spec in DATASETS.items() if not callable(spec.shape)}


def build_data(
    options: Mapping[str, Any], paths: Mapping[str, Any], device: torch.device | str = "cpu"
) -> DataBundle:
    """Read the dataset `options["name"]` (`options`: the `dataset` group's keys) from
    `paths["data_dir"]`, split, corrupt labels if asked, move to `device`."""
    cache_dir = paths.get("cache_dir")
    source = _spec(str(options["name"])).load(
        options, str(paths["data_dir"]), str(cache_dir) if cache_dir else None
    )
    noise = options.get("label_noise") or {}
    return assemble(
        options["name"],
        source,
        val_fraction=float(options["val_fraction"]),
        split_seed=int(options["split_seed"]),
        label_noise_rate=float(noise.get("rate", 0.0)),
        label_noise_kind=str(noise.get("kind", "symmetric")),
        device=device,
    )
