"""Pretrained weights from torch's cache, with one clear line when they are not there offline."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.models import WeightsEnum

from saln_exp.errors import DataMissingError


def weights_path(weights: WeightsEnum) -> Path:
    """Where torch.hub keeps (or would keep) this file: $TORCH_HOME/hub/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def pretrained_state_dict(weights: WeightsEnum, what: str, download: bool) -> dict:
    path = weights_path(weights)
    if not path.exists() and not download:
        raise DataMissingError(
            f"pretrained {what} weights not found at {path}; copy {weights.url} there "
            f"(or set TORCH_HOME), or allow the download with {what_override(what)}=true"
        )
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as err:
        raise DataMissingError(f"could not download {what} weights to {path}: {err}") from None


def what_override(what: str) -> str:
    return "selector.download" if what.startswith("resnet50") else "model.download"
