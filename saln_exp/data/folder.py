"""Class-per-folder image datasets (torchvision's ImageFolder layout), decoded once into uint8
tensors and cached.

`<split>/<class>/<image>`: the classes are the sorted folder names (ImageFolder's order), the
images every file with an image extension below a class folder. Decoding (open, convert, resize to
image_size x image_size) runs in DataLoader workers, once: the tensors are cached under
`paths.cache_dir/datasets`, keyed by every file's path, size and modification time, so an edited
folder is decoded again and never served stale pixels.

A decoded dataset lives in memory (and on the device, like every dataset here). One whose uint8
pixels exceed `dataset.max_decoded_gib` streams from its files instead (`dataset.storage: auto`,
see `streams`): its splits hold the file paths (`stream.ImageFiles`) and every loop that reads
them decodes its batches in DataLoader workers, ahead of the device.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from tqdm import tqdm

from saln_exp.cache import StaleEntry, fingerprint, load_or_compute
from saln_exp.data.stream import Decoder, ImageFiles, leave_signals_to_the_main_process, undecodable
from saln_exp.errors import ConfigError, DataCorruptError
from saln_exp.safe_load import load_plain

log = logging.getLogger(__name__)
STORAGES = ("auto", "memory", "stream")

DECODE_BATCH = 256  # images per DataLoader batch while decoding


def class_folders(split_dir: Path, name: str) -> list[str]:
    """The class names of one split, sorted as ImageFolder sorts them, or one line saying why not."""
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise DataCorruptError(
            f"{name}: {split_dir} holds no class folder; the images go in "
            f"{split_dir}/<class name>/<image file>"
        )
    return classes


def open_split(split_dir: Path, name: str, classes: list[str] | None = None,
               like: str | None = None) -> ImageFolder:  # fmt: skip
    """torchvision's ImageFolder over `split_dir`, after checking what it would not say clearly:
    no class folder, an empty class folder (by name), class folders other than `classes` (those
    of `like`, e.g. the training split: labels are positions in that sorted list)."""
    found = class_folders(split_dir, name)
    if classes is not None and found != list(classes):
        extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise DataCorruptError(
            f"{name}: the class folders of {split_dir} are not those of {like}"
            + (f"; not in {like}: {', '.join(extra)}" if extra else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )
    ds = OnceImageFolder(str(split_dir), allow_empty=True)
    counts = torch.bincount(torch.tensor(ds.targets, dtype=torch.long), minlength=len(ds.classes))
    empty = [ds.classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise DataCorruptError(
            f"{name}: class folder {split_dir / empty[0]} holds no image "
            f"({' '.join(IMG_EXTENSIONS)})"
            + (f" (and {len(empty) - 1} more empty class folder(s))" if len(empty) > 1 else "")
            + "; add images or remove the folder"
        )  # fmt: skip
    return ds


class OnceImageFolder(ImageFolder):
    """torchvision's ImageFolder, with each file listed once: links to folders are followed (as
    torchvision does), but a folder reached a second time is not read again. torchvision walks a
    link loop such as `cat/loop -> .` until the path grows too long, reading every image of the
    folder once per level (16 images became 336 samples)."""

    @staticmethod
    def make_dataset(
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,  # open_split names an empty class folder itself
    ) -> list[tuple[str, int]]:
        """torchvision's `make_dataset` order: classes sorted, then folders by path, then files
        by name."""
        valid = is_valid_file or (lambda path: has_file_allowed_extension(path, extensions))
        samples = []
        for name in sorted(class_to_idx):
            class_dir = os.path.join(directory, name)
            for folder, files in sorted(_walk_once(class_dir)):
                paths = (os.path.join(folder, file) for file in sorted(files))
                samples += [(path, class_to_idx[name]) for path in paths if valid(path)]
        return samples


def _walk_once(top: str) -> Iterator[tuple[str, list[str]]]:
    """(folder, its file names) for `top` and every folder below it, links followed, each real
    folder once; a link to a folder already read is skipped with a warning naming it."""
    seen = {os.path.realpath(top)}
    for folder, subfolders, files in os.walk(top, followlinks=True):
        subfolders.sort()  # which of two paths to one folder is read does not depend on the disk
        for sub in list(subfolders):
            path = os.path.join(folder, sub)
            real = os.path.realpath(path)
            if real in seen:
                subfolders.remove(sub)
                log.warning("%s leads to a folder read already (%s): its images are counted once",
                            path, real)  # fmt: skip
            seen.add(real)
        yield folder, files


def decoded_bytes(n_images: int, channels: int, size: int) -> int:
    return n_images * channels * size * size


def streams(name: str, n_images: int, channels: int, size: int, max_gib: float,
            storage: str) -> bool:  # fmt: skip
    """Whether the images stream from their files (True) or are decoded into memory once.

    `auto` decodes into memory up to `max_decoded_gib` of uint8 pixels and streams above;
    `memory` refuses a larger folder (one line, before decoding anything); `stream` always
    streams."""
    if storage not in STORAGES:
        raise ConfigError(f"dataset.storage must be one of {list(STORAGES)}, got {storage!r}")
    needed = decoded_bytes(n_images, channels, size)
    over = needed > float(max_gib) * 2**30
    unit = next(u for u in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")) if needed >= u[0] / 10
                or u[1] == "KiB")  # fmt: skip
    amount = f"{needed / unit[0]:.1f} {unit[1]}"
    what = f"{name}: {n_images} images at {channels}x{size}x{size} decode to {amount}"
    if storage == "memory" and over:
        raise ConfigError(
            f"{what}, over dataset.max_decoded_gib={max_gib}; set dataset.storage=auto to stream "
            "them from disk, lower dataset.image_size, or raise dataset.max_decoded_gib if this "
            "machine's memory (and the GPU's) holds it twice over"
        )
    if storage == "auto" and over:
        log.info("%s, over dataset.max_decoded_gib=%s: streaming them from disk", what, max_gib)
    return storage == "stream" or over


def images_of(ds: ImageFolder, name: str, split: str, channels: int, size: int,
              cache_dir: str | None, workers: int, stream: bool) -> tuple[Tensor | ImageFiles, Tensor]:  # fmt: skip
    """The images (decoded, or their files when they `stream`) and long [N] labels of `ds`."""
    if stream:
        files = ImageFiles([path for path, _ in ds.samples], channels, size, workers, name)
        return files, torch.tensor(ds.targets, dtype=torch.long)
    return decode(ds, name, split, channels, size, cache_dir, workers)


def decode(ds: ImageFolder, name: str, split: str, channels: int, size: int,
           cache_dir: str | None, workers: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """uint8 [N, channels, size, size] images and long [N] labels of `ds`, from the cache when an
    entry for exactly these files exists, else decoded (in `workers` processes) and cached."""
    targets = torch.tensor(ds.targets, dtype=torch.long)

    def decode_all() -> Tensor:
        paths = [path for path, _ in ds.samples]
        images = torch.empty(len(paths), channels, size, size, dtype=torch.uint8)
        n_batches = math.ceil(len(paths) / DECODE_BATCH)
        n_workers = min(int(workers), os.cpu_count() or 1, n_batches) if n_batches > 1 else 0
        loader = DataLoader(
            Decoder(paths, channels, size), batch_size=DECODE_BATCH, num_workers=n_workers,
            worker_init_fn=leave_signals_to_the_main_process,
            generator=torch.Generator(),  # not torch's global one (see rng.preserved)
        )  # fmt: skip
        start = 0
        for batch, errors in tqdm(
            loader, desc=f"decoding {name}/{split}", leave=False, disable=None
        ):
            bad = next((i for i, err in enumerate(errors) if err), None)
            if bad is not None:
                raise DataCorruptError(undecodable(name, paths[start + bad], errors[bad]))
            images[start : start + len(batch)] = batch
            start += len(batch)
        return images

    def load(file: Path) -> Tensor:
        blob = load_plain(file)
        if not _matches(blob, targets, channels, size):
            raise StaleEntry("decoded for other files or another size")
        return blob["images"]

    if not cache_dir:
        return decode_all(), targets
    images, _ = load_or_compute(
        _cache_path(ds, name, split, channels, size, cache_dir), f"decoded {name}/{split}",
        load, decode_all, lambda x, tmp: torch.save({"images": x, "targets": targets}, tmp),
    )  # fmt: skip
    return images, targets


def _matches(blob: object, targets: Tensor, channels: int, size: int) -> bool:
    if not isinstance(blob, dict) or not {"images", "targets"} <= set(blob):
        return False
    images = blob["images"]
    return (
        isinstance(images, Tensor)
        and images.dtype == torch.uint8
        and tuple(images.shape) == (len(targets), channels, size, size)
        and torch.equal(blob["targets"], targets)
    )


def _cache_path(ds: ImageFolder, name: str, split: str, channels: int, size: int,
                cache_dir: str) -> Path:  # fmt: skip
    key = fingerprint({"files": files_digest(ds)}, {"channels": channels, "size": size})
    return Path(cache_dir) / "datasets" / f"{name}_{split}_{channels}x{size}_{key}.pt"


def files_digest(ds: ImageFolder) -> str:
    """Every file's path, label, size and mtime: a replaced or edited image changes it. Paths
    go in as the file system's bytes (os.fsencode), so a name that is not valid UTF-8 is read too;
    a UTF-8 name gives the same bytes as before."""
    files = hashlib.sha1(os.fsencode(os.path.abspath(ds.root)) + b"\n")
    for path, label in ds.samples:
        stat = os.stat(path)
        files.update(
            os.fsencode(os.path.relpath(path, ds.root))
            + f"\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode()
        )
    return files.hexdigest()


def channel_stats(images: Tensor | ImageFiles) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W], in [0, 1] units,
    accumulated in float64 over chunks of about 16 M values so a large split never doubles in
    memory (streamed files are decoded chunk by chunk). A channel that barely varies gets std
    1/255 (one grey level), not a division by ~0."""
    n, channels, height, width = images.shape
    chunk = max(1, 2**24 // (channels * height * width))
    starts = range(0, n, chunk)
    if isinstance(images, ImageFiles):
        batches = images.batches(slice(start, start + chunk) for start in starts)
    else:
        batches = (images[start : start + chunk] for start in starts)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for batch in tqdm(batches, total=len(starts), desc="image statistics", leave=False,
                      disable=None if isinstance(images, ImageFiles) else True):  # fmt: skip
        x = batch.to(torch.float64).div_(255.0).transpose(0, 1).flatten(1)
        total += x.sum(1)
        squares += x.square().sum(1)
    count = max(1, n * height * width)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1 / 255)
    return tuple(mean.tolist()), tuple(std.tolist())
