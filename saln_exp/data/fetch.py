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
# header (AssertionError), a truncated array (RuntimeError, ValueError), a garbage pickle, a
# `.mat` without the arrays it should hold (KeyError)
DAMAGED = (
    RuntimeError,
    AssertionError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    pickle.UnpicklingError,
)


def _expand(part: str) -> list[str]:
    head, _, rest = part.partition("{")
    if not rest:
        return [part]
    options, _, tail = rest.partition("}")
    return [head + option + tail for option in options.split(",")]


def _patterns(expected: str) -> list[str]:
    return [p for part in expected.split(" and ") for p in _expand(part.strip())]


def all_present(data_dir: str, expected: str) -> bool:
    """Whether every file `expected` names is there (" and "-separated glob patterns under
    data_dir, `{a,b}` for alternatives): then a failure to read them means they are damaged."""
    return all(glob.glob(os.path.join(data_dir, pattern)) for pattern in _patterns(expected))


def _damaged(name: str, data_dir: str, expected: str) -> tuple[str, str]:
    """Subject and pronoun of the "corrupt" line: the file itself when `expected` names one."""
    patterns = _patterns(expected)
    if len(patterns) == 1 and not glob.has_magic(patterns[0]):
        return f"{name} file {os.path.join(data_dir, patterns[0])} is", "it"
    return f"{name} files in {data_dir} are", "them"


def open_torchvision(factory: Callable[[bool], D], name: str, data_dir: str, download: bool, expected: str) -> D:
    """Call `factory(download)`; turn torchvision's failures into one line: the files are not
    there (with the override that downloads them), they are there but damaged, or the download
    failed."""
    try:
        return factory(download)
    # OSError: with download on, URLError and friends (offline, proxy, DNS); with it off, a
    # reader that hit the end of a truncated file (scipy's loadmat: "could not read bytes")
    except (*DAMAGED, OSError) as err:
        if download:
            raise DataMissingError(f"could not download {name} into {data_dir}: {err}") from None
        if all_present(data_dir, expected):
            what, them = _damaged(name, data_dir, expected)
            raise DataCorruptError(
                f"{what} corrupt or truncated ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:120] if str(err) else 'unreadable'}); delete {them} and "
                f"download again: saln-train dataset={name} dataset.download=true paths.data_dir={data_dir}"
            ) from None
        raise DataMissingError(
            f"{name} not found in {data_dir} (expected {expected}); download it once with: "
            f"saln-train dataset={name} dataset.download=true paths.data_dir={data_dir}"
        ) from None
