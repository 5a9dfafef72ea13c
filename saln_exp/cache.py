"""The caches (reference models, pretrained features, prune scores, decoded image folders): one
fingerprint, one atomic publish, one load-or-compute.

**Fingerprint.** An entry is named by `fingerprint(dataset_content(...), recipe)`: a hash of
what the dataset holds and of how the entry was computed from it. `dataset_content` is the one
notion of "the dataset's content" every cache uses: the dataset config without the keys that never
change a sample (batch size, download), plus, for an entry computed from one split, the digest of
that split's dataset indices and given labels, which pins the validation fraction, the split
seed, label noise and pruning whatever produced them. An entry computed from the images alone
(features) leaves out the keys that only select or relabel samples, so a label-noise or
validation-fraction sweep shares one feature file.

**Publish.** A cache is a convenience: an entry that cannot be written (read-only or full cache
directory) is a warning and the run goes on with what it computed. Entries are written to a private
temporary file and renamed into place, so parallel sweep jobs may publish the same entry at the
same time and a reader never sees half of one.

**Load or compute.** A cached entry that cannot be read, or does not fit (another version, a
truncated file, a crafted one), is one warning naming the file, and the entry is computed again
and overwritten. `.pt` entries are read through `safe_load.load_plain` (no code runs).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from saln_exp.rundir import RunDirWriteError, atomic_write

log = logging.getLogger(__name__)

T = TypeVar("T")

# dataset keys that never change a sample or its label
NEVER_CONTENT = ("batch_size", "download", "storage", "workers", "max_decoded_gib")
# dataset keys that only choose which samples a split holds, or relabel them: an entry computed
# from the images alone (pretrained features of every sample) does not depend on them
SELECTS_OR_RELABELS = ("val_fraction", "split_seed", "label_noise", "augment")


class StaleEntry(Exception):
    """A cache entry that was read but does not fit what is needed now (computed again)."""


def split_digest(split: Any) -> str:
    """The dataset indices and given labels of a split (anything with `indices` and `targets`)."""
    digest = hashlib.sha1()
    digest.update(split.indices.cpu().numpy().tobytes())
    digest.update(split.targets.cpu().numpy().tobytes())
    return digest.hexdigest()


def plain(value: Any) -> Any:
    """Nested mappings and sequences as dicts and lists: a key hashes the same whatever mapping
    type (a config node, a dict) held the values."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(item) for item in value]
    return value


def dataset_content(
    dataset: Mapping[str, Any], split: Any = None, images_only: bool = False
) -> dict[str, Any]:
    """What the dataset holds, as every cache key sees it (see the module docstring); `dataset`
    is the dataset config group's keys."""
    config = plain(dataset)
    dropped = NEVER_CONTENT + (SELECTS_OR_RELABELS if images_only else ())
    content: dict[str, Any] = {"config": {k: v for k, v in config.items() if k not in dropped}}
    if split is not None:
        content["split"] = split_digest(split)
    return content


def fingerprint(content: dict[str, Any], recipe: dict[str, Any]) -> str:
    """The name of a cache entry: a hash of the dataset's content and of the recipe."""
    blob = json.dumps({"content": content, "recipe": recipe}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


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


def load_or_compute(
    path: Path,
    what: str,
    load: Callable[[Path], T],
    compute: Callable[[], T],
    save: Callable[[T, Path], None],
) -> tuple[T, bool]:
    """(the entry, whether it came from the cache). `load` raises on an entry that cannot be read
    or does not fit; that is one warning, then `compute` and `save` (best effort) replace it."""
    from saln_exp.safe_load import UNREADABLE

    path = Path(path)
    if path.exists():
        try:
            value = load(path)
            log.info("%s: loaded from cache %s", what, path)
            return value, True
        except (*UNREADABLE, StaleEntry, KeyError, TypeError, AttributeError) as err:
            log.warning("%s cache %s is unreadable or stale (%s: %s); computing it again",
                        what, path, type(err).__name__, str(err).splitlines()[0] if str(err) else "")  # fmt: skip
    value = compute()
    if publish(path, lambda tmp: save(value, tmp), what):
        log.info("%s: computed and cached at %s", what, path)
    return value, False
