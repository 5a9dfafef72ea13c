"""Class-per-folder image datasets (torchvision's ImageFolder layout), decoded once into uint8
tensors and cached.

`<split>/<class>/<image>`: the classes are the sorted folder names (ImageFolder's order), the
images every file with an image extension below a class folder. Decoding (open, convert, resize to
image_size x image_size) runs in DataLoader workers, once: the tensors are cached under
`paths.cache_dir/datasets`, keyed by every file's path, size and modification time, so an edited
folder is decoded again and never served stale pixels.

The decoded dataset lives in memory (and on the device, like every dataset here): `check_budget`
refuses one larger than `dataset.max_decoded_gib` before anything is decoded. Streaming from disk
is not built: the trainer, evaluation, features, reference models and pruning all index
`Split.images` as one in-memory tensor.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import PIL.Image
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2 as T
from tqdm import tqdm

from saln_exp.cache import StaleEntry, fingerprint, load_or_compute
from saln_exp.errors import ConfigError, DataCorruptError
from saln_exp.safe_load import load_plain

# what PIL raises on a file it cannot decode: not an image (UnidentifiedImageError, an OSError),
# truncated ("image file is truncated", OSError), a broken PNG chunk (SyntaxError, ValueError),
# an absurd size (DecompressionBombError)
UNDECODABLE = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)
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
    ds = ImageFolder(str(split_dir), allow_empty=True)
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


def decoded_bytes(n_images: int, channels: int, size: int) -> int:
    return n_images * channels * size * size


def check_budget(name: str, n_images: int, channels: int, size: int, max_gib: float) -> None:
    """Refuse, before decoding, a dataset whose uint8 pixels exceed `dataset.max_decoded_gib`."""
    needed = decoded_bytes(n_images, channels, size)
    if needed > float(max_gib) * 2**30:
        amount = (
            f"{needed / 2**30:.1f} GiB" if needed >= 2**30 / 10 else f"{needed / 2**20:.1f} MiB"
        )
        raise ConfigError(
            f"{name}: {n_images} images at {channels}x{size}x{size} decode to "
            f"{amount}, over dataset.max_decoded_gib={max_gib}; lower "
            "dataset.image_size, or raise dataset.max_decoded_gib if this machine's memory (and "
            "the GPU's) holds it twice over (streaming from disk is not supported)"
        )


class _Decoder(Dataset):
    """One image file -> uint8 channels x size x size; a file that cannot be decoded gives zeros
    and the reason (raised in the main process, naming the file, never as a worker traceback)."""

    def __init__(self, paths: list[str], channels: int, size: int):
        self.paths, self.channels, self.size = paths, channels, size
        self.mode = "L" if channels == 1 else "RGB"
        self.resize = T.Resize((size, size), antialias=True)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        try:
            with PIL.Image.open(self.paths[i]) as image:
                image = image.convert(self.mode)  # decodes the whole file
            if image.size != (self.size, self.size):
                image = self.resize(image)
            return T.functional.pil_to_tensor(image), ""
        except UNDECODABLE as err:
            reason = str(err).splitlines()[0][:120] if str(err) else "unreadable"
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), (
                f"{type(err).__name__}: {reason}"
            )


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
            _Decoder(paths, channels, size), batch_size=DECODE_BATCH, num_workers=n_workers
        )
        start = 0
        for batch, errors in tqdm(
            loader, desc=f"decoding {name}/{split}", leave=False, disable=None
        ):
            bad = next((i for i, err in enumerate(errors) if err), None)
            if bad is not None:
                raise DataCorruptError(
                    f"{name}: {paths[start + bad]} cannot be read as an image ({errors[bad]}); "
                    "replace or delete the file"
                )
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
    # keyed by every file's path, label, size and mtime: a replaced or edited image is decoded again
    files = hashlib.sha1(f"{os.path.abspath(ds.root)}\n".encode())
    for path, label in ds.samples:
        stat = os.stat(path)
        files.update(
            f"{os.path.relpath(path, ds.root)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode()
        )
    key = fingerprint({"files": files.hexdigest()}, {"channels": channels, "size": size})
    return Path(cache_dir) / "datasets" / f"{name}_{split}_{channels}x{size}_{key}.pt"


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W], in [0, 1] units,
    accumulated in float64 over chunks of about 16 M values so a large split never doubles in
    memory. A channel that barely varies gets std 1/255 (one grey level), not a division by ~0."""
    n, channels, height, width = images.shape
    chunk = max(1, 2**24 // (channels * height * width))
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, n, chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255.0).transpose(0, 1).flatten(1)
        total += x.sum(1)
        squares += x.square().sum(1)
    count = max(1, n * height * width)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1 / 255)
    return tuple(mean.tolist()), tuple(std.tolist())
