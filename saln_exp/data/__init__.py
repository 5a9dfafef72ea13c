"""Datasets: one module per family, registered by name. `build_data` is the only entry point."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from saln_exp.data import cifar, digits, mnist, pets, synthetic
from saln_exp.data.base import BatchPipeline, DataBundle, SourceData, Split, assemble

LOADERS = {
    "digits": digits.load,
    "synthetic": synthetic.load,
    "mnist": mnist.load,
    "cifar10": cifar.load,
    "cifar100": cifar.load,
    "pets": pets.load,
}

__all__ = ["LOADERS", "BatchPipeline", "DataBundle", "SourceData", "Split", "build_data"]


def build_data(cfg: DictConfig, paths: DictConfig, device: torch.device | str = "cpu") -> DataBundle:
    """Read `cfg.name` from `paths.data_dir`, split, corrupt labels if asked, move to `device`."""
    loader = LOADERS[cfg.name]
    if cfg.name == "pets":
        source = loader(cfg, str(paths.data_dir), str(paths.cache_dir))
    else:
        source = loader(cfg, str(paths.data_dir))
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
