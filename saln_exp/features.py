"""Frozen-backbone features for SALN's `features=pretrained`, extracted once per dataset.

The paper extracts ResNet-50 features of the whole dataset once and reuses them for every batch.
Here the features of the un-augmented training images (train and validation rows alike, keyed by
source index) are computed on the first run and cached on disk under
`paths.cache_dir/features/`, keyed by the dataset's content settings, the backbone, its weights
and the input size; every later run with the same key loads them instead of extracting again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from saln_exp.cache import publish_torch
from saln_exp.data.base import IMAGENET_MEAN, IMAGENET_STD, DataBundle
from saln_exp.errors import ConfigError
from saln_exp.models.weights import pretrained_state_dict
from saln_exp.safe_load import load_cached

log = logging.getLogger(__name__)

BACKBONES = {
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights),
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights),
}
# dataset options that do not change the pixels of the source training set
NOT_CONTENT = {"batch_size", "val_fraction", "label_noise", "download", "augment"}


def check_backbone(name: str, weights: str | None) -> None:
    """Both strings name a cache file, so only known names pass (no `../` out of the cache)."""
    if name not in BACKBONES:
        raise ConfigError(f"selector.backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    known = [w.name for w in BACKBONES[name][1]]
    if weights is not None and weights not in known:
        raise ConfigError(
            f"selector.backbone_weights must be one of {known} or null for {name}, got {weights!r}"
        )


def build_backbone(name: str, weights: str | None, download: bool) -> nn.Module:
    """The backbone without its classification head, in eval mode, gradients off."""
    check_backbone(name, weights)
    factory, weights_enum = BACKBONES[name]
    net = factory(weights=None)
    if weights:
        net.load_state_dict(pretrained_state_dict(weights_enum[weights], name, download))
    net.fc = nn.Identity()
    return net.eval().requires_grad_(False)


def cache_key(dataset_cfg: DictConfig, backbone: str, weights: str | None, size: int | None) -> str:
    content = {
        k: v
        for k, v in OmegaConf.to_container(dataset_cfg, resolve=True).items()
        if k not in NOT_CONTENT
    }
    blob = json.dumps(
        {"dataset": content, "backbone": backbone, "weights": weights, "size": size}, sort_keys=True
    )
    return f"{dataset_cfg.name}_{backbone}_{weights}_{size}_{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


@torch.inference_mode()
def extract(
    backbone: nn.Module, data: DataBundle, size: int | None, batch_size: int, device: torch.device
) -> Tensor:
    """Features of every source-training image (train and validation rows), by source index."""
    splits = [data.train] + ([data.val] if data.val is not None else [])
    n_rows = len(data.noisy)
    backbone = backbone.to(device)
    out: Tensor | None = None
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    total = sum(len(s) for s in splits)
    with tqdm(total=total, desc="extracting features", leave=False, disable=None) as bar:
        for split in splits:
            for start in range(0, len(split), batch_size):
                x = split.images[start : start + batch_size].to(device)
                x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                if size is not None and x.shape[-1] != size:
                    x = F.interpolate(
                        x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
                    )
                feats = backbone((x - mean) / std).float()
                if out is None:
                    out = torch.zeros(n_rows, feats.shape[1], device=device)
                out[split.indices[start : start + batch_size]] = feats
                bar.update(len(x))
    assert out is not None
    return out


class FeatureStore:
    """Pretrained features keyed by source index, on the training device."""

    def __init__(self, features: Tensor):
        self.features = features

    def __call__(self, index: Tensor) -> Tensor:
        return self.features[index]

    @classmethod
    def load_or_extract(
        cls,
        data: DataBundle,
        dataset_cfg: DictConfig,
        cache_dir: str,
        backbone: str,
        weights: str | None,
        size: int | None,
        device: torch.device,
        download: bool = False,
        batch_size: int = 128,
    ) -> FeatureStore:
        path = (
            Path(cache_dir) / "features" / f"{cache_key(dataset_cfg, backbone, weights, size)}.pt"
        )
        cached = load_cached(path, "pretrained features", device) if path.exists() else None
        if isinstance(cached, torch.Tensor):
            log.info("pretrained features: loaded from cache %s", path)
            return cls(cached)
        log.info(
            "pretrained features: extracting with %s (%s), caching to %s", backbone, weights, path
        )
        net = build_backbone(backbone, weights, download)
        features = extract(net, data, size, batch_size, device)
        publish_torch(path, features.cpu(), "pretrained features")
        return cls(features)
