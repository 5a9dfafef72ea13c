"""scikit-learn's bundled handwritten digits: real images that need no download (the offline default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from saln_exp.data.base import SourceData, register_dataset


@register_dataset("digits", shape=(1, 32, 10))
def load(options: Mapping[str, Any], data_dir: str, cache_dir: str | None = None) -> SourceData:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # 0..16 -> 0..1
    targets = torch.tensor(digits.target, dtype=torch.long)
    train_pos, test_pos = train_test_split(
        np.arange(len(targets)),
        test_size=options["test_fraction"],
        random_state=options["split_seed"],
        stratify=digits.target,
    )
    size = int(options["image_size"])
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    train_x = images[np.sort(train_pos)]
    mean, std = train_x.mean().item(), train_x.std().item()
    return SourceData(
        train_images=train_x,
        train_targets=targets[np.sort(train_pos)],
        test_images=images[np.sort(test_pos)],
        test_targets=targets[np.sort(test_pos)],
        num_classes=10,
        mean=(mean,),
        std=(std,),
    )
