"""torchvision Oxford-IIIT Pet (37 breeds), resized once to image_size and cached as uint8 tensors.

Decoding 7 349 JPEGs takes a minute; the cache under paths.cache_dir makes later runs start at once.
SALN's augmentation (flip, rotation, jitter) runs on whole batches on the device; ImageNet mean/std.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchvision.datasets import OxfordIIITPet
from torchvision.transforms import v2 as T
from tqdm import tqdm

from saln_exp.cache import publish_torch
from saln_exp.data.augment import saln_pets_batched
from saln_exp.data.base import IMAGENET_MEAN, IMAGENET_STD, SourceData
from saln_exp.data.fetch import open_torchvision
from saln_exp.errors import DataCorruptError
from saln_exp.safe_load import load_cached



def load(cfg: DictConfig, data_dir: str, cache_dir: str | None = None) -> SourceData:
    size = int(cfg.image_size)
    train_x, train_y = _read(cfg, data_dir, cache_dir, "trainval", size)
    test_x, test_y = _read(cfg, data_dir, cache_dir, "test", size)
    return SourceData(
        train_images=train_x,
        train_targets=train_y,
        test_images=test_x,
        test_targets=test_y,
        num_classes=37,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment=saln_pets_batched() if cfg.augment else None,
    )


def _read(cfg: DictConfig, data_dir: str, cache_dir: str | None, split: str, size: int):
    ds = open_torchvision(
        lambda download: OxfordIIITPet(data_dir, split=split, target_types="category", download=download),
        "pets",
        data_dir,
        bool(cfg.download),
        "oxford-iiit-pet/images/*.jpg and oxford-iiit-pet/annotations/{trainval,test}.txt",
    )
    cache = _cache_path(ds, cache_dir, split, size)
    blob = load_cached(cache, "pets decode") if cache is not None and cache.exists() else None
    if isinstance(blob, dict) and {"images", "targets"} <= set(blob):
        return blob["images"], blob["targets"]
    resize = T.Compose([T.Resize((size, size), antialias=True), T.PILToTensor()])
    images = torch.empty(len(ds), 3, size, size, dtype=torch.uint8)
    targets = torch.empty(len(ds), dtype=torch.long)
    for i in tqdm(range(len(ds)), desc=f"decoding pets/{split}", leave=False, disable=None):
        try:
            image, label = ds[i]
        except OSError as err:  # a missing or undecodable JPEG that the annotation lists
            raise DataCorruptError(
                f"pets: annotations/{split}.txt lists {ds._images[i]}, which cannot be read "
                f"({type(err).__name__}); restore the file or download the dataset again"
            ) from None
        images[i] = resize(image.convert("RGB"))
        targets[i] = label
    if cache is not None:
        publish_torch(cache, {"images": images, "targets": targets}, f"decoded pets/{split}")
    return images, targets


def _cache_path(ds: OxfordIIITPet, cache_dir: str | None, split: str, size: int) -> Path | None:
    if not cache_dir:
        return None
    # keyed by the file list, so a changed download never reuses stale pixels
    names = "\n".join(str(p) for p in ds._images).encode()
    key = hashlib.sha1(names).hexdigest()[:12]
    return Path(cache_dir) / "datasets" / f"pets_{split}_{size}_{key}.pt"
