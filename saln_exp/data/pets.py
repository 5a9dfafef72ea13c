"""torchvision Oxford-IIIT Pet (37 breeds), resized once to image_size and cached as uint8 tensors.

Decoding 7 349 JPEGs takes a minute; the cache under paths.cache_dir makes later runs start at once.
SALN's augmentation (flip, rotation, jitter) runs on whole batches on the device; ImageNet mean/std.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.datasets import OxfordIIITPet
from torchvision.transforms import v2 as T
from tqdm import tqdm

from saln_exp.cache import StaleEntry, fingerprint, load_or_compute
from saln_exp.data.augment import saln_pets_batched
from saln_exp.data.base import IMAGENET_MEAN, IMAGENET_STD, SourceData, register_dataset
from saln_exp.data.fetch import open_torchvision
from saln_exp.errors import DataCorruptError
from saln_exp.safe_load import load_plain


@register_dataset("pets", shape=(3, 224, 37))
def load(options: Mapping[str, Any], data_dir: str, cache_dir: str | None = None) -> SourceData:
    size = int(options["image_size"])
    train_x, train_y = _read(options, data_dir, cache_dir, "trainval", size)
    test_x, test_y = _read(options, data_dir, cache_dir, "test", size)
    return SourceData(
        train_images=train_x,
        train_targets=train_y,
        test_images=test_x,
        test_targets=test_y,
        num_classes=37,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment=saln_pets_batched() if options["augment"] else None,
    )


def _read(options: Mapping[str, Any], data_dir: str, cache_dir: str | None, split: str, size: int):
    ds = open_torchvision(
        lambda download: OxfordIIITPet(
            data_dir, split=split, target_types="category", download=download
        ),
        "pets",
        data_dir,
        bool(options["download"]),
        "oxford-iiit-pet/images/*.jpg and oxford-iiit-pet/annotations/{trainval,test}.txt",
    )

    def decode() -> dict[str, Tensor]:
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
        return {"images": images, "targets": targets}

    def load(file: Path) -> dict[str, Tensor]:
        blob = load_plain(file)
        if not isinstance(blob, dict) or not {"images", "targets"} <= set(blob):
            raise StaleEntry("not a decoded split")
        return blob

    if not cache_dir:
        blob = decode()
    else:
        blob, _ = load_or_compute(
            _cache_path(ds, cache_dir, split, size), f"decoded pets/{split}", load, decode,
            lambda b, tmp: torch.save(b, tmp),
        )  # fmt: skip
    return blob["images"], blob["targets"]


def _cache_path(ds: OxfordIIITPet, cache_dir: str, split: str, size: int) -> Path:
    # keyed by the file list, so a changed download never reuses stale pixels
    files = hashlib.sha1("\n".join(str(p) for p in ds._images).encode()).hexdigest()
    key = fingerprint({"files": files}, {"split": split, "size": size})
    return Path(cache_dir) / "datasets" / f"pets_{split}_{size}_{key}.pt"
