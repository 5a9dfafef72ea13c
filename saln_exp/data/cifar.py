"""torchvision CIFAR-10 / CIFAR-100.

Augmentation (per sample, on whole batches on the device): `augment_policy: assist` is ASSIST's
(flip, affine, crop, strong jitter) with CIFAR statistics; `saln` is the SALN paper's (flip,
rotation 15, jitter .2/.2/.2/.1) with ImageNet mean/std, as SALN fed CIFAR-10 to an ImageNet
ResNet-18. `image_size` above 32 resizes each batch on the device (after augmenting), so the
stored dataset stays 32x32 uint8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchvision.datasets import CIFAR10, CIFAR100

from saln_exp.data.augment import assist_cifar_batched, saln_pets_batched
from saln_exp.data.base import IMAGENET_MEAN, IMAGENET_STD, SourceData, register_dataset
from saln_exp.data.fetch import open_torchvision
from saln_exp.errors import ConfigError

POLICIES = {"assist": assist_cifar_batched, "saln": saln_pets_batched}

VARIANTS = {
    # name: (torchvision class, classes, mean, std, folder torchvision expects)
    "cifar10": (CIFAR10, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "cifar-10-batches-py/{data_batch_1,data_batch_2,data_batch_3,data_batch_4,data_batch_5,test_batch}"),
    "cifar100": (CIFAR100, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar-100-python/{train,test}"),
}


@register_dataset("cifar100", shape=(3, 32, 100))
@register_dataset("cifar10", shape=(3, 32, 10))
def load(options: Mapping[str, Any], data_dir: str, cache_dir: str | None = None) -> SourceData:
    cls, classes, mean, std, folder = VARIANTS[options["name"]]

    def read(train: bool):
        ds = open_torchvision(
            lambda download: cls(data_dir, train=train, download=download),
            options["name"],
            data_dir,
            bool(options["download"]),
            folder,
        )
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW, uint8
        return images, torch.tensor(ds.targets, dtype=torch.long)

    policy = str(options.get("augment_policy", "assist"))
    if policy not in POLICIES:
        raise ConfigError(f"dataset.augment_policy must be one of {sorted(POLICIES)}, got {policy!r}")
    size = int(options.get("image_size") or 32)
    if size < 32:
        raise ConfigError(f"dataset.image_size must be at least 32 for {options['name']}, got {size}")
    if policy == "saln":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    (train_x, train_y), (test_x, test_y) = read(True), read(False)
    return SourceData(
        train_images=train_x,
        train_targets=train_y,
        test_images=test_x,
        test_targets=test_y,
        num_classes=classes,
        mean=mean,
        std=std,
        augment=POLICIES[policy]() if options["augment"] else None,
        resize=size if size != 32 else None,
    )
