"""Your own images, one folder per class: `<root>/train/<class>/*` and `<root>/test/<class>/*`.

`root` is relative to paths.data_dir (or absolute). Without `test/`, `test_fraction` carves a
seeded, class-stratified test split from train/ (its own random stream); validation is carved
from what remains by `val_fraction`, as for every dataset. Every image is converted to RGB (or
grayscale with `channels: 1`) and resized (squashed, aspect not kept) to image_size x image_size
once, at decode; the uint8 tensors are cached under paths.cache_dir (see `folder`). `mean` / `std`
null: the per-channel statistics of the decoded training images (train/ less the carved test, the
validation carve included); a list: used as given (e.g. ImageNet's for pretrained backbones).
`storage: auto` streams a folder whose pixels exceed `max_decoded_gib` from its files instead of
decoding it into memory (`memory` refuses it in one line, `stream` always streams; see `folder`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import ImageFolder

from saln_exp.data import folder
from saln_exp.data.augment import flip_crop_batched, saln_pets_batched
from saln_exp.cache import StaleEntry, fingerprint, load_or_compute
from saln_exp.data.base import SourceData, _stratified_split, register_dataset, take_rows
from saln_exp.data.stream import ImageFiles
from saln_exp.errors import ConfigError, DataMissingError
from saln_exp.rng import stream_seed

POLICIES = {"flip_crop": flip_crop_batched, "saln": lambda size: saln_pets_batched()}


def root_of(options: Mapping[str, Any], data_dir: str) -> Path:
    if not options.get("root"):
        raise ConfigError("dataset.root must name the folder that holds train/ (and test/)")
    return Path(data_dir).expanduser() / Path(str(options["root"])).expanduser()  # an absolute root wins


def _train_dir(options: Mapping[str, Any], data_dir: str) -> Path:
    root = root_of(options, data_dir)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataMissingError(
            f"imagefolder: {train_dir} not found; put the images in {root}/train/<class>/ and "
            f"{root}/test/<class>/, or point dataset.root at the folder that holds train/"
        )
    return train_dir


def shape_of(options: Mapping[str, Any], data_dir: str) -> tuple[int, int, int]:
    """Channels and side from the config, classes from the class folders of train/."""
    return (
        int(options["channels"]),
        int(options["image_size"]),
        len(folder.class_folders(_train_dir(options, data_dir), options["name"])),
    )


@register_dataset("imagefolder", shape=shape_of)
def load(options: Mapping[str, Any], data_dir: str, cache_dir: str | None = None) -> SourceData:
    channels, size, test_fraction = int(options["channels"]), int(options["image_size"]), float(options["test_fraction"])
    _check(options, channels, size, test_fraction)
    train_dir = _train_dir(options, data_dir)
    test_dir = train_dir.parent / "test"
    if test_dir.is_dir() and test_fraction > 0:
        raise ConfigError(
            f"dataset.test_fraction={test_fraction} but {test_dir} exists: use its images as the "
            "test split (dataset.test_fraction=0) or remove the folder"
        )
    if not test_dir.is_dir() and test_fraction == 0:
        raise DataMissingError(
            f"imagefolder: {test_dir} not found; add it (one folder per class, as in train/) or "
            "set dataset.test_fraction=0.2 to carve a test split from train/"
        )
    train = folder.open_split(train_dir, options["name"])
    test = (
        folder.open_split(test_dir, options["name"], train.classes, str(train_dir))
        if test_dir.is_dir()
        else None
    )
    n_images = len(train) + (len(test) if test is not None else 0)
    stream = folder.streams(
        options["name"], n_images, channels, size, options["max_decoded_gib"], str(options["storage"])
    )
    workers = int(options["workers"])

    def images(ds, split: str):
        return folder.images_of(ds, options["name"], split, channels, size, cache_dir, workers, stream)

    train_x, train_y = images(train, "train")
    if test is not None:
        test_x, test_y = images(test, "test")
    else:
        if math.ceil(test_fraction * len(train_y)) >= len(train_y):
            raise ConfigError(
                f"dataset.test_fraction={test_fraction} leaves no training images out of "
                f"{len(train_y)} in {train_dir}; lower it"
            )
        seed = stream_seed(int(options["split_seed"]), "test_split")
        keep, held = _stratified_split(train_y.numpy(), test_fraction, seed)
        keep, held = torch.from_numpy(keep), torch.from_numpy(held)
        (train_x, train_y), (test_x, test_y) = (
            (take_rows(train_x, keep), train_y[keep]),
            (take_rows(train_x, held), train_y[held]),
        )
    if options.get("mean") is None:
        mean, std = train_statistics(options, train, train_x, cache_dir)
    else:
        mean, std = tuple(float(m) for m in options["mean"]), tuple(float(s) for s in options["std"])
    policy = str(options["augment_policy"])
    return SourceData(
        train_images=train_x,
        train_targets=train_y,
        test_images=test_x,
        test_targets=test_y,
        num_classes=len(train.classes),
        mean=mean,
        std=std,
        augment=POLICIES[policy](size) if options["augment"] else None,
    )


def train_statistics(options: Mapping[str, Any], train: ImageFolder, train_x: Tensor | ImageFiles,
                     cache_dir: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:  # fmt: skip
    """Per-channel mean / std of the training images. Streamed files take a full decoding pass:
    the result is cached, keyed by the files and by what carves the test split from them."""
    if not isinstance(train_x, ImageFiles) or not cache_dir:
        return folder.channel_stats(train_x)
    recipe = {"channels": int(options["channels"]), "size": int(options["image_size"]),
              "test_fraction": float(options["test_fraction"]), "split_seed": int(options["split_seed"])}  # fmt: skip
    key = fingerprint({"files": folder.files_digest(train)}, recipe)
    path = Path(cache_dir) / "datasets" / f"{options['name']}_train_statistics_{key}.json"

    def load(file: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
        stats = json.loads(file.read_text())
        mean, std = tuple(map(float, stats["mean"])), tuple(map(float, stats["std"]))
        if len(mean) != int(options["channels"]) or len(std) != int(options["channels"]):
            raise StaleEntry("statistics of another number of channels")
        return mean, std

    def save(stats: tuple, tmp: Path) -> None:
        tmp.write_text(json.dumps({"mean": stats[0], "std": stats[1]}))

    stats, _ = load_or_compute(
        path, f"{options['name']} training statistics", load,
        lambda: folder.channel_stats(train_x), save,
    )  # fmt: skip
    return stats


def _check(options: Mapping[str, Any], channels: int, size: int, test_fraction: float) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if size < 1:
        raise ConfigError(f"dataset.image_size must be positive, got {size}")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"dataset.test_fraction must be in [0, 1), got {test_fraction}")
    if str(options["augment_policy"]) not in POLICIES:
        raise ConfigError(
            f"dataset.augment_policy must be one of {sorted(POLICIES)}, got {options['augment_policy']!r}"
        )
    if (options.get("mean") is None) != (options.get("std") is None):
        raise ConfigError(
            "dataset.mean and dataset.std go together: set both, or neither (null: from train/)"
        )
    if options.get("mean") is not None:
        try:
            mean, std = (
                np.asarray(list(options["mean"]), dtype=float),
                np.asarray(list(options["std"]), dtype=float),
            )
        except (TypeError, ValueError):
            mean = std = np.zeros(0)
        if mean.shape != (channels,) or std.shape != (channels,) or not (std > 0).all():
            raise ConfigError(
                f"dataset.mean and dataset.std must be lists of {channels} number(s) (std > 0) "
                f"for dataset.channels={channels}, got {options['mean']} and {options['std']}"
            )
    if str(options["storage"]) not in folder.STORAGES:
        raise ConfigError(
            f"dataset.storage must be one of {list(folder.STORAGES)}, got {options['storage']!r}"
        )
    if float(options["max_decoded_gib"]) <= 0:
        raise ConfigError(f"dataset.max_decoded_gib must be positive, got {options['max_decoded_gib']}")
    if int(options["workers"]) < 0:
        raise ConfigError(
            f"dataset.workers must be 0 (decode in this process) or more, got {options['workers']}"
        )
