"""Opening torchvision datasets with one clear line when the files are missing or damaged."""

from __future__ import annotations

import glob
import os
import pickle
from collections.abc import Callable
from typing import TypeVar

from saln_exp.errors import DataCorruptError, DataMissingError

D = TypeVar("D")

# what torchvision's readers raise on damaged files: a failed checksum (RuntimeError), a bad idx
# header (AssertionError), a truncated array (RuntimeError, ValueError), a garbage pickle
DAMAGED = (RuntimeError, AssertionError, ValueError, EOFError, IndexError, pickle.UnpicklingError)


def _expand(part: str) -> list[str]:
    head, _, rest = part.partition("{")
    if not rest:
        return [part]
    options, _, tail = rest.partition("}")
    return [head + option + tail for option in options.split(",")]


def all_present(data_dir: str, expected: str) -> bool:
    """Whether every file `expected` names is there (" and "-separated glob patterns under
    data_dir, `{a,b}` for alternatives): then a failure to read them means they are damaged."""
    patterns = [p for part in expected.split(" and ") for p in _expand(part.strip())]
    return all(glob.glob(os.path.join(data_dir, pattern)) for pattern in patterns)


def open_torchvision(factory: Callable[[bool], D], name: str, data_dir: str, download: bool, expected: str) -> D:
    """Call `factory(download)`; turn torchvision's failures into one line: the files are not
    there (with the override that downloads them), they are there but damaged, or the download
    failed."""
    try:
        return factory(download)
    except DAMAGED as err:
        if download:
            raise DataMissingError(f"could not download {name} into {data_dir}: {err}") from None
        if all_present(data_dir, expected):
            raise DataCorruptError(
                f"{name} files in {data_dir} are corrupt or truncated ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:120] if str(err) else 'unreadable'}); delete them and "
                f"download again: saln-train dataset={name} dataset.download=true paths.data_dir={data_dir}"
            ) from None
        raise DataMissingError(
            f"{name} not found in {data_dir} (expected {expected}); download it once with: "
            f"saln-train dataset={name} dataset.download=true paths.data_dir={data_dir}"
        ) from None
    except OSError as err:  # URLError and friends: offline, proxy, DNS
        raise DataMissingError(f"could not download {name} into {data_dir}: {err}") from None
