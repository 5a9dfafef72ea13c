"""Publishing cache entries (reference models, pretrained features, prune scores, decoded Pets).

A cache is a convenience: an entry that cannot be written (read-only or full cache directory) is a
warning and the run goes on with what it computed. Entries are written to a private temporary file
and renamed into place, so parallel sweep jobs may publish the same entry at the same time and a
reader never sees half of one. Reading goes through `safe_load.load_cached` (no code runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from saln_exp.rundir import RunDirWriteError, atomic_write

log = logging.getLogger(__name__)


def publish(path: Path, write: Callable[[Path], None], what: str) -> bool:
    """`write(tmp)` then rename into `path`; False (and one warning) when it cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        return True
    except (OSError, RunDirWriteError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        log.warning("%s not cached (%s); the run continues, and the next one computes it again",
                    what, reason)  # fmt: skip
        return False


def publish_torch(path: Path, obj: object, what: str) -> bool:
    import torch

    return publish(path, lambda tmp: torch.save(obj, tmp), what)
