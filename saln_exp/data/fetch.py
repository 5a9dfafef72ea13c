"""Opening torchvision datasets with one clear line when the files are not there."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from saln_exp.errors import DataMissingError

D = TypeVar("D")


def open_torchvision(factory: Callable[[bool], D], name: str, data_dir: str, download: bool, expected: str) -> D:
    """Call `factory(download)`; turn torchvision's "not found" and network failures into
    DataMissingError naming the directory and the override that downloads."""
    try:
        return factory(download)
    except RuntimeError as err:
        if download:
            raise DataMissingError(f"could not download {name} into {data_dir}: {err}") from None
        raise DataMissingError(
            f"{name} not found in {data_dir} (expected {expected}); download it once with: "
            f"saln-train dataset={name} dataset.download=true paths.data_dir={data_dir}"
        ) from None
    except OSError as err:  # URLError and friends: offline, proxy, DNS
        raise DataMissingError(f"could not download {name} into {data_dir}: {err}") from None
