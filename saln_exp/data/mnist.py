"""torchvision MNIST, zero-padded from 28x28 to 32x32 as ASSIST fed it to LeNet and ResNet-18.

`load_idx` reads any dataset in MNIST's idx format through its torchvision class (Fashion-MNIST
uses it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import nn
from torchvision.datasets import MNIST

from saln_exp.data.base import SourceData, register_dataset
from saln_exp.data.fetch import open_torchvision
from saln_exp.errors import ConfigError

MEAN, STD = (0.1307,), (0.3081,)
IDX_FILES = "{train-images-idx3-ubyte,train-labels-idx1-ubyte,t10k-images-idx3-ubyte,t10k-labels-idx1-ubyte}"


@register_dataset("mnist", shape=(1, 32, 10))
def load(options: Mapping[str, Any], data_dir: str, cache_dir: str | None = None) -> SourceData:
    return load_idx(options, data_dir, MNIST, MEAN, STD)


def load_idx(
    options: Mapping[str, Any],
    data_dir: str,
    cls: type[MNIST],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: nn.Module | None = None,
) -> SourceData:
    """28x28 idx files under `<data_dir>/<cls name>/raw/`, zero-padded to `dataset.image_size`."""
    grow = int(options["image_size"]) - 28
    if grow < 0:
        raise ConfigError(
            f"dataset.image_size must be at least 28 for {options['name']}, got {options['image_size']}"
        )
    before, after = grow // 2, grow - grow // 2  # odd growth: the extra row / column goes last

    def read(train: bool):
        return open_torchvision(
            lambda download: cls(data_dir, train=train, download=download),
            options["name"],
            data_dir,
            bool(options["download"]),
            f"{cls.__name__}/raw/{IDX_FILES}",
        )

    train, test = read(True), read(False)

    def images(ds):  # uint8 [N, 1, image_size, image_size], zeros around the 28x28 image
        return F.pad(ds.data, (before, after, before, after)).unsqueeze(1).contiguous()

    return SourceData(
        train_images=images(train),
        train_targets=train.targets.long(),
        test_images=images(test),
        test_targets=test.targets.long(),
        num_classes=10,
        # normalize=false feeds pixels in [0, 1] (torchvision's ToTensor alone), to study how much
        # the input scale changes a recipe's losses
        mean=mean if options.get("normalize", True) else (0.0,),
        std=std if options.get("normalize", True) else (1.0,),
        augment=augment,
    )
