"""torchvision Fashion-MNIST: MNIST's idx format and shapes (1x28x28, 10 classes of clothing).

Kept at its native 28x28 by default, as the peers' benchmarks feed it; `image_size: 32`
zero-pads it like MNIST for ASSIST's LeNet / ResNet-18 recipes. Normalised with the training
split's pixel statistics, mean 0.2860 and std 0.3530 (about 72.9 / 255 and 90.0 / 255, over
all 60 000 x 28 x 28 training pixels; e.g. github.com/chatflip/CalculationMeanStd). `augment: true`
adds a flip and a crop of the image padded by image_size / 8 (3 pixels at 28; clothes survive
a mirror).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchvision.datasets import FashionMNIST

from saln_exp.data.augment import flip_crop_batched
from saln_exp.data.base import SourceData, register_dataset
from saln_exp.data.mnist import load_idx

MEAN, STD = (0.2860,), (0.3530,)


@register_dataset("fashion_mnist", shape=(1, 28, 10))
def load(options: Mapping[str, Any], data_dir: str, cache_dir: str | None = None) -> SourceData:
    augment = flip_crop_batched(int(options["image_size"])) if options["augment"] else None
    return load_idx(options, data_dir, FashionMNIST, MEAN, STD, augment)
