"""CINIC-10 (Darlow et al. 2018): CIFAR-10's classes at 32x32, 90 000 images per split, from
CIFAR-10 and downsampled ImageNet, in the ImageFolder layout.

`<data_dir>/CINIC-10/{train,valid,test}/<class>/*.png`, as the authors' `CINIC-10.tar.gz`
unpacks. The PNGs are decoded once (torchvision's ImageFolder, in DataLoader workers) and cached
as uint8 tensors under paths.cache_dir (or streamed from the files: `storage`, see `folder`). `valid/` is read only with `train_on_valid: true`, which
trains on train/ + valid/ (180 000 images) as the authors suggest; otherwise it is ignored and
`val_fraction` carves validation from train/ as for every dataset. Normalised with the mean / std
the authors publish in their README (github.com/BayesWatch/cinic-10). Augmentation policies as
CIFAR's (`assist`, `saln`) plus `flip_crop`, the common flip + 4-pixel-padded crop, the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from saln_exp.data import folder
from saln_exp.data.augment import flip_crop_batched
from saln_exp.data.base import IMAGENET_MEAN, IMAGENET_STD, SourceData, cat_rows, register_dataset
from saln_exp.data.cifar import POLICIES as CIFAR_POLICIES
from saln_exp.errors import ConfigError, DataMissingError

FOLDER = "CINIC-10"
URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.47889522, 0.47227842, 0.43047404), (0.24205776, 0.23828046, 0.25874835)
POLICIES = {**CIFAR_POLICIES, "flip_crop": lambda: flip_crop_batched(32)}


@register_dataset("cinic10", shape=(3, 32, 10))
def load(options: Mapping[str, Any], data_dir: str, cache_dir: str | None = None) -> SourceData:
    policy = str(options.get("augment_policy", "flip_crop"))
    if policy not in POLICIES:
        raise ConfigError(
            f"dataset.augment_policy must be one of {sorted(POLICIES)}, got {policy!r}"
        )
    size = int(options.get("image_size") or 32)
    if size < 32:
        raise ConfigError(f"dataset.image_size must be at least 32 for cinic10, got {size}")
    root = Path(data_dir) / FOLDER
    splits = ["train", "valid", "test"] if options.get("train_on_valid") else ["train", "test"]
    if options["download"] and not all((root / s).is_dir() for s in splits):
        _download(data_dir, root)
    for split in splits:
        if not (root / split).is_dir():
            raise DataMissingError(
                f"cinic10 not found in {data_dir} (expected {FOLDER}/{split}/<class>/*.png); "
                "download it once with: saln-train dataset=cinic10 dataset.download=true "
                f"paths.data_dir={data_dir}"
            )
    like = f"CINIC-10 ({', '.join(CLASSES)})"
    folders = {s: folder.open_split(root / s, "cinic10", CLASSES, like) for s in splits}
    n_images = sum(map(len, folders.values()))
    stream = folder.streams("cinic10", n_images, 3, 32, options["max_decoded_gib"], str(options["storage"]))
    decoded = {
        s: folder.images_of(ds, "cinic10", s, 3, 32, cache_dir, int(options["workers"]), stream)
        for s, ds in folders.items()
    }
    train = [decoded[s] for s in splits if s != "test"]
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if policy == "saln" else (MEAN, STD)
    return SourceData(
        train_images=cat_rows([x for x, _ in train]),
        train_targets=torch.cat([y for _, y in train]),
        test_images=decoded["test"][0],
        test_targets=decoded["test"][1],
        num_classes=10,
        mean=mean,
        std=std,
        augment=POLICIES[policy]() if options["augment"] else None,
        resize=size if size != 32 else None,  # stored at 32x32, resized per batch on the device
    )


def _download(data_dir: str, root: Path) -> None:
    """The authors' tarball through torchvision's downloader, unpacked into root (its splits one
    level up if the archive wraps them in a folder of its own)."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(URL, download_root=data_dir, extract_root=str(root))
    except (OSError, RuntimeError, ValueError) as err:  # offline, proxy, DNS, a bad archive
        raise DataMissingError(f"could not download cinic10 into {data_dir}: {err}") from None
    if not (root / "train").is_dir():
        for inner in [d for d in root.iterdir() if (d / "train").is_dir()][:1]:
            for item in inner.iterdir():
                item.rename(root / item.name)
