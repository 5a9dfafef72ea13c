"""torchvision SVHN (Street View House Numbers, cropped digits): 3x32x32, 10 classes.

The files are the MATLAB `.mat` files of the dataset's site (`train_32x32.mat`, `test_32x32.mat`,
and `extra_32x32.mat` with `extra: true`) under `<data_dir>/svhn/`; torchvision verifies their md5
sums and maps label 10 to digit 0. `extra: true` appends the extra split's 531 131 images to the
73 257 of train (train first, then extra: source-train indices 0..73256 are train's), as most SVHN
papers reporting ~98% do; `val_fraction` then carves validation from train+extra. `extra: false`
(the default) never opens `extra_32x32.mat`. Normalised with the training split's per-channel
statistics (0.4377, 0.4438, 0.4728) / (0.1980, 0.2010, 0.1970), the values DeepCore's SVHN loader
uses (github.com/PatrickZH/DeepCore), with or without extra (they are train's, not recomputed over
train+extra). No augmentation by default; `augment: true` is a random crop of the image padded
by 4 pixels, without flips (a mirrored digit is another glyph).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torchvision.datasets import SVHN

from saln_exp.data.augment import flip_crop_batched
from saln_exp.data.base import SourceData, register_dataset
from saln_exp.data.fetch import open_torchvision
from saln_exp.errors import DataCorruptError, DataMissingError

MEAN, STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
FOLDER = "svhn"  # under paths.data_dir: torchvision itself would put the files in data_dir directly


@register_dataset("svhn", shape=(3, 32, 10))
def load(options: Mapping[str, Any], data_dir: str, cache_dir: str | None = None) -> SourceData:
    root = os.path.join(data_dir, FOLDER)

    def read(split: str):
        # the extra file is downloaded only when the command asks for it
        plain = "dataset=svhn dataset.download=true"
        command = "dataset=svhn dataset.extra=true dataset.download=true" if split == "extra" else plain
        try:
            ds = open_torchvision(
                lambda download: SVHN(root, split=split, download=download),
                "svhn",
                data_dir,
                bool(options["download"]),
                f"{FOLDER}/{split}_32x32.mat",
            )
        except (DataMissingError, DataCorruptError) as err:
            raise type(err)(str(err).replace(plain, command)) from None
        # torchvision already transposed X (32, 32, 3, N) to N x 3 x 32 x 32 (a strided view)
        images = torch.from_numpy(ds.data).contiguous()
        labels = torch.from_numpy(ds.labels.astype("int64")).reshape(-1)
        shaped = images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        labelled = len(images) == len(labels) and bool(((labels >= 0) & (labels <= 9)).all())
        if not (shaped and labelled):
            raise DataCorruptError(
                f"svhn file {os.path.join(root, ds.filename)} holds X {tuple(ds.data.shape)} "
                f"{ds.data.dtype} and {len(labels)} labels, not uint8 32x32x3xN images with N labels "
                f"in 1..10; delete it and download again: saln-train {command} "
                f"paths.data_dir={data_dir}"
            )
        return images, labels

    (train_x, train_y), (test_x, test_y) = read("train"), read("test")
    if options.get("extra"):
        extra_x, extra_y = read("extra")
        train_x, train_y = torch.cat((train_x, extra_x)), torch.cat((train_y, extra_y))
        del extra_x, extra_y
    return SourceData(
        train_images=train_x,
        train_targets=train_y,
        test_images=test_x,
        test_targets=test_y,
        num_classes=10,
        mean=MEAN,
        std=STD,
        augment=flip_crop_batched(32, flip=False) if options["augment"] else None,
    )
