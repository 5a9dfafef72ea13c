"""torchvision CIFAR-10 / CIFAR-100 with ASSIST's training augmentation (on the device, per sample)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torchvision.datasets import CIFAR10, CIFAR100

from saln_exp.data.augment import assist_cifar_batched
from saln_exp.data.base import SourceData
from saln_exp.data.fetch import open_torchvision

VARIANTS = {
    # name: (torchvision class, classes, mean, std, folder torchvision expects)
    "cifar10": (CIFAR10, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "cifar-10-batches-py/"),
    "cifar100": (CIFAR100, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar-100-python/"),
}


def load(cfg: DictConfig, data_dir: str) -> SourceData:
    cls, classes, mean, std, folder = VARIANTS[cfg.name]

    def read(train: bool):
        ds = open_torchvision(
            lambda download: cls(data_dir, train=train, download=download),
            cfg.name,
            data_dir,
            bool(cfg.download),
            folder,
        )
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW, uint8
        return images, torch.tensor(ds.targets, dtype=torch.long)

    (train_x, train_y), (test_x, test_y) = read(True), read(False)
    return SourceData(
        train_images=train_x,
        train_targets=train_y,
        test_images=test_x,
        test_targets=test_y,
        num_classes=classes,
        mean=mean,
        std=std,
        augment=assist_cifar_batched() if cfg.augment else None,
    )
