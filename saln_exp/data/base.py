"""What every dataset module produces, and the split / noise / device plumbing they share.

A dataset module only turns files into tensors (`SourceData`). Everything else (validation split,
label noise, moving to the device, batch augmentation) happens here, once, for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from saln_exp.data.noise import corrupt_labels
from saln_exp.data.stream import ImageFiles
from saln_exp.errors import ConfigError
from saln_exp.registry import Registry


# torchvision's ImageNet statistics: SALN normalises with them, and the pretrained backbones expect them
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


Images = Tensor | ImageFiles  # decoded pixels, or the files they stream from (data/stream.py)
Positions = Tensor | slice


@dataclass
class SourceData:
    """A dataset as read from disk: images not normalised (uint8 0-255 or float 0-1), or the
    files of a folder too large to decode into memory."""

    train_images: Images
    train_targets: Tensor
    test_images: Images
    test_targets: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: nn.Module | None = None  # per-sample batch augmentation for training batches
    resize: int | None = None  # resize every batch on the device to resize x resize (e.g. 224)


# Whole splits are kept normalised (float32) when all of them fit in this many bytes: converting
# and normalising every batch again was 40% of an FCNet100 epoch on MNIST (evaluation and
# training batches alike), and the cached values are the very same floats, element for element.
NORMALISED_CACHE_BYTES = 2 * 2**30
# the float copy is made this many bytes at a time: each chunk through the pipeline holds about
# three float temporaries of its size (the float cast, x - mean, / std) on top of the copy
NORMALISED_CHUNK_BYTES = 64 * 2**20


@dataclass
class Split:
    """One split: images, labels, and `indices`, each sample's index in its source split
    (reference losses, cached features and forgetting counts are keyed by it).

    The images are a tensor (on the training device), or the files of a streamed folder: read
    them through `read` / `read_batches` (or the pipeline's `batch` / `batches`), which give
    tensors on the labels' device either way."""

    images: Images
    targets: Tensor
    indices: Tensor
    normalised: Tensor | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def streamed(self) -> bool:
        return isinstance(self.images, ImageFiles)

    def to(self, device: torch.device) -> Split:
        images = self.images if self.streamed else self.images.to(device)
        return Split(images, self.targets.to(device), self.indices.to(device))

    def take(self, positions: Tensor | np.ndarray) -> Split:
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.targets.device)
        return Split(
            take_rows(self.images, positions), self.targets[positions], self.indices[positions]
        )

    def read(self, positions: Positions) -> Tensor:
        """The raw images at `positions` (a tensor of positions or a slice)."""
        if not self.streamed:
            return self.images[positions]
        return self.images.read(positions).to(self.targets.device)

    def read_batches(self, chunks: Iterable[Positions]) -> Iterator[Tensor]:
        """The raw images of each chunk of positions, in order: files stream in DataLoader
        workers, decoded ahead of the device."""
        if not self.streamed:
            return (self.images[chunk] for chunk in chunks)
        device = self.targets.device
        pin = device.type == "cuda"
        return (x.to(device, non_blocking=pin) for x in self.images.batches(chunks, pin))


def cat_rows(parts: list[Images]) -> Images:
    """The rows of `parts` one after the other (pixels, or the files of a streamed split)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], ImageFiles):
        return ImageFiles.concat(parts)
    return torch.cat(parts)


def take_rows(images: Images, positions: Tensor | np.ndarray) -> Images:
    """`images[positions]` for pixels; the files at `positions` for a streamed split."""
    if isinstance(images, ImageFiles):
        return images.subset(positions)
    return images[torch.as_tensor(positions, dtype=torch.long, device=images.device)]


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    pipeline: BatchPipeline
    # bool per source-train index: True where the training label was corrupted on purpose
    noisy: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    clean_targets: Tensor | None = None  # uncorrupted training labels, aligned with `train`

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """The shape the model sees (after the pipeline's resize, if any)."""
        channels, height, width = self.train.images.shape[1:]
        size = self.pipeline.resize
        return (channels, size, size) if size else (channels, height, width)

    @property
    def augmented(self) -> bool:
        return self.pipeline.augment is not None

    def splits(self) -> dict[str, Split]:
        out = {"train": self.train, "test": self.test}
        if self.val is not None:
            out["val"] = self.val
        return out


class BatchPipeline(nn.Module):
    """Raw batch -> model input: to float, augment (training batches only), normalise.

    Augmentation runs on whole batches on the data's device with per-sample random parameters
    (kornia), so small datasets never leave the GPU and no DataLoader workers are needed.
    """

    def __init__(
        self, mean: tuple[float, ...], std: tuple[float, ...], augment: nn.Module | None, resize: int | None = None
    ):
        super().__init__()
        self.resize = resize
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.augment = augment
        self.cached_bytes = 0  # normalised split copies held (see `batch`)

    def batch(self, split: Split, positions: Positions, train: bool) -> Tensor:
        """Model inputs for `split[positions]`: `self(split.read(positions), train)`, read from
        the split's normalised copy whenever no random augmentation applies to this batch."""
        cached = self._normalised(split, train)
        if cached is not None:
            return cached[positions]
        return self(split.read(positions), train)

    def batches(self, split: Split, chunks: Iterable[Positions], train: bool) -> Iterator[Tensor]:
        """`batch` of each chunk of positions, in order, one at a time as it is asked for: the
        way a loop over a whole split reads it (a streamed split decodes the next chunks in
        workers meanwhile). Augmentation draws its randomness as the batch is asked for, so a
        loop gets the same numbers as calling `batch` for each chunk."""
        cached = self._normalised(split, train)
        if cached is not None:
            return (cached[chunk] for chunk in chunks)
        return (self(x, train) for x in split.read_batches(chunks))

    def _normalised(self, split: Split, train: bool) -> Tensor | None:
        """The whole split through the pipeline once (no augmentation), if it fits the budget
        and this batch is not randomly augmented."""
        if train and self.augment is not None:
            return None
        if split.normalised is not None:
            return split.normalised
        if split.streamed or self.resize:
            return None
        if split.images.numel() * 4 + self.cached_bytes > NORMALISED_CACHE_BYTES:
            return None
        # a plain tensor even when first asked for inside an inference_mode block (evaluation),
        # so training batches sliced from it can be saved for backward
        with torch.inference_mode(False), torch.no_grad():
            images = split.images
            chunk = max(1, NORMALISED_CHUNK_BYTES // (4 * images.shape[1:].numel()))  # an empty split too
            first = self(images[:chunk], train=False)
            # filled in place, not concatenated: a list of chunks plus their concatenation
            # held the whole float copy twice at the peak
            normalised = first.new_empty((len(images), *first.shape[1:]))
            normalised[: len(first)] = first
            for start in range(chunk, len(images), chunk):
                normalised[start : start + chunk] = self(images[start : start + chunk], train=False)
            split.normalised = normalised
        self.cached_bytes += split.normalised.numel() * split.normalised.element_size()
        return split.normalised

    def forward(self, x: Tensor, train: bool) -> Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if train and self.augment is not None:
            x = self.augment(x)
        if self.resize and x.shape[-1] != self.resize:  # on the device, after augmenting at native size
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


def assemble(
    name: str,
    source: SourceData,
    val_fraction: float,
    split_seed: int,
    label_noise_rate: float = 0.0,
    label_noise_kind: str = "symmetric",
    device: torch.device | str = "cpu",
) -> DataBundle:
    """Carve validation from train, corrupt training labels if asked, move everything to `device`."""
    n_train = len(source.train_targets)
    all_idx = np.arange(n_train)
    train_pos, val_pos = all_idx, None
    if val_fraction > 0:
        train_pos, val_pos = _stratified_split(source.train_targets.numpy(), val_fraction, split_seed)

    def source_split(positions: np.ndarray) -> Split:
        p = torch.as_tensor(positions, dtype=torch.long)
        return Split(take_rows(source.train_images, p), source.train_targets[p].clone(), p.clone())

    train = source_split(train_pos)
    val = source_split(val_pos) if val_pos is not None else None
    test = Split(
        source.test_images,
        source.test_targets,
        torch.arange(len(source.test_targets), dtype=torch.long),
    )

    noisy = torch.zeros(n_train, dtype=torch.bool)
    clean_targets = None
    if label_noise_rate > 0:
        clean_targets = train.targets.clone()
        train.targets, flipped = corrupt_labels(
            train.targets, source.num_classes, label_noise_rate, label_noise_kind, split_seed
        )
        noisy[train.indices[flipped]] = True

    device = torch.device(device)
    pipeline = BatchPipeline(source.mean, source.std, source.augment, source.resize).to(device)
    return DataBundle(
        name=name,
        train=train.to(device),
        val=val.to(device) if val is not None else None,
        test=test.to(device),
        num_classes=source.num_classes,
        pipeline=pipeline,
        noisy=noisy.to(device),
        clean_targets=clean_targets.to(device) if clean_targets is not None else None,
    )


def _stratified_split(targets: np.ndarray, fraction: float, seed: int):
    """Seeded, class-stratified split; falls back to a plain seeded split when stratifying is
    impossible (a class with one sample, or fewer validation / training samples than classes)."""
    idx = np.arange(len(targets))
    n_val = math.ceil(fraction * len(targets))  # scikit-learn's rounding of a float test_size
    n_train = len(targets) - n_val
    if n_train < 1:
        raise ConfigError(
            f"dataset.val_fraction={fraction} leaves no training samples out of {len(targets)}; "
            "lower dataset.val_fraction"
        )
    counts = np.bincount(targets)
    present = counts[counts > 0]
    can_stratify = present.min() >= 2 and min(n_val, n_train) >= len(present)
    train_pos, val_pos = train_test_split(
        idx, test_size=n_val, random_state=seed, stratify=targets if can_stratify else None
    )
    return np.sort(train_pos), np.sort(val_pos)


# -- the registry ------------------------------------------------------------------------------------
Shape = tuple[int, int, int]  # channels, side, classes
Loader = Callable[[Mapping[str, Any], str, str | None], SourceData]


@dataclass(frozen=True)
class Dataset:
    """How to read a dataset, `load(options, data_dir, cache_dir) -> SourceData` (`options`: the
    dataset group's keys), and its shape: fixed (channels, side, classes), the side overridden
    by `dataset.image_size` where a config sets one, or `shape(options, data_dir)` when the
    config and files decide (synthetic, your folder)."""

    load: Loader
    shape: Shape | Callable[[Mapping[str, Any], str], Shape]


DATASETS: Registry[Dataset] = Registry("dataset")


def register_dataset(
    name: str, shape: Shape | Callable[[Mapping[str, Any], str], Shape]
) -> Callable[[Loader], Loader]:
    """Decorate a dataset module's `load` to register it as the dataset `name` (its YAML's
    `name:`) with its `shape` (see `Dataset`)."""
    return DATASETS.decorator(name, lambda load: Dataset(load, shape))
