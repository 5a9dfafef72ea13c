"""Reading `.pt` files that someone else may have written, without running their code.

Run directories and caches sit on shared filesystems, and `torch.load` of a full pickle executes
whatever the file asks for. Every `.pt` file saln-exp reads back goes through `load_plain`:
tensors and plain containers only (`weights_only=True`). A cache file that is not such a file
(crafted, truncated, from another version) is a warning and a recomputation, never a lost run.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# what torch.load raises for a truncated zip, a pickle it refuses, or a file of another kind
UNREADABLE = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    OSError,
    IndexError,  # random bytes: torch reads a header that is not there
    zipfile.BadZipFile,
)


def load_plain(path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load` that accepts tensors, numbers, strings and containers of them, nothing else."""
    return torch.load(path, map_location=map_location, weights_only=True)
