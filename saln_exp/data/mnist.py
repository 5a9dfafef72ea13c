"""torchvision MNIST, zero-padded from 28x28 to 32x32 as ASSIST fed it to LeNet and ResNet-18."""

from __future__ import annotations

import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision.datasets import MNIST

from saln_exp.data.base import SourceData
from saln_exp.data.fetch import open_torchvision

MEAN, STD = (0.1307,), (0.3081,)


def load(cfg: DictConfig, data_dir: str) -> SourceData:
    def read(train: bool):
        return open_torchvision(
            lambda download: MNIST(data_dir, train=train, download=download),
            "mnist",
            data_dir,
            bool(cfg.download),
            "MNIST/raw/*-idx?-ubyte",
        )

    train, test = read(True), read(False)
    pad = (int(cfg.image_size) - 28) // 2
    if pad < 0:
        raise ValueError(f"dataset.image_size must be at least 28 for mnist, got {cfg.image_size}")

    def images(ds):  # uint8 [N, 1, 28 + 2 pad, 28 + 2 pad]
        return F.pad(ds.data, (pad, pad, pad, pad)).unsqueeze(1).contiguous()

    return SourceData(
        train_images=images(train),
        train_targets=train.targets.long(),
        test_images=images(test),
        test_targets=test.targets.long(),
        num_classes=10,
        mean=MEAN,
        std=STD,
    )
