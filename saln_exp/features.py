"""Frozen-backbone features for SALN's `features=pretrained`, extracted once per dataset.

The paper extracts ResNet-50 features of the whole dataset once and reuses them for every batch.
Here the features of the un-augmented training images (train and validation rows alike, keyed by
source index) are computed on the first run and cached on disk under
`paths.cache_dir/features/`, keyed by the images (cache.dataset_content), the rows extracted,
the backbone, its weights and the input size; every later run with the same key loads them instead of extracting again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from tqdm.auto import tqdm

from saln_exp.cache import StaleEntry, dataset_content, fingerprint, load_or_compute
from saln_exp.data.base import IMAGENET_MEAN, IMAGENET_STD, DataBundle
from saln_exp.errors import ConfigError
from saln_exp.models.weights import pretrained_state_dict
from saln_exp.safe_load import load_plain

log = logging.getLogger(__name__)

BACKBONES = {
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights),
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights),
}


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


def cache_key(
    data: DataBundle,
    dataset: Mapping[str, Any],
    backbone: str,
    weights: str | None,
    size: int | None,
) -> str:
    """The images (not the split or the labels) and which rows are extracted: a pruned training
    split extracts fewer rows, and its file must never serve a run that needs the others."""
    rows = torch.cat([s.indices for s in (data.train, data.val) if s is not None]).sort().values
    content = dataset_content(dataset, images_only=True)
    content["rows"] = hashlib.sha1(rows.cpu().numpy().tobytes()).hexdigest()
    recipe = {"backbone": backbone, "weights": weights, "size": size}
    return f"{dataset['name']}_{backbone}_{weights}_{size}_{fingerprint(content, recipe)}"


@torch.inference_mode()
def embed(backbone: nn.Module, images: Tensor, size: int | None) -> Tensor:
    """Backbone features of a batch of raw images, preprocessed as ImageNet backbones expect:
    scaled to [0, 1] (uint8), grey made RGB, resized to `size` (None: native), ImageNet
    mean / std. The one preprocessing of cached features (and of the benchmark's uncached ones)."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return backbone((x - mean) / std).float()


@torch.inference_mode()
def extract(
    backbone: nn.Module, data: DataBundle, size: int | None, batch_size: int, device: torch.device
) -> Tensor:
    """Features of every source-training image (train and validation rows), by source index."""
    splits = [data.train] + ([data.val] if data.val is not None else [])
    n_rows = len(data.noisy)
    backbone = backbone.to(device)
    out: Tensor | None = None
    total = sum(len(s) for s in splits)
    with tqdm(total=total, desc="extracting features", leave=False, disable=None) as bar:
        for split in splits:
            chunks = [
                slice(start, start + batch_size) for start in range(0, len(split), batch_size)
            ]
            for chunk, x in zip(chunks, split.read_batches(chunks), strict=True):
                feats = embed(backbone, x.to(device), size)
                if out is None:
                    out = torch.zeros(n_rows, feats.shape[1], device=device)
                out[split.indices[chunk]] = feats
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
        dataset: Mapping[str, Any],
        cache_dir: str,
        backbone: str,
        weights: str | None,
        size: int | None,
        device: torch.device,
        download: bool = False,
        batch_size: int = 128,
    ) -> FeatureStore:
        key = cache_key(data, dataset, backbone, weights, size)
        path = Path(cache_dir) / "features" / f"{key}.pt"

        def load(file: Path) -> Tensor:
            features = load_plain(file, device)
            if not isinstance(features, Tensor) or len(features) != len(data.noisy):
                raise StaleEntry(f"not a [{len(data.noisy)}, d] feature tensor")
            return features

        def compute() -> Tensor:
            log.info("pretrained features: extracting with %s (%s)", backbone, weights)
            return extract(
                build_backbone(backbone, weights, download), data, size, batch_size, device
            )

        features, _ = load_or_compute(
            path, "pretrained features", load, compute, lambda t, tmp: torch.save(t.cpu(), tmp)
        )
        return cls(features)
