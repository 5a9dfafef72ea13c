"""The run directory: the name of every file a run writes, how it is written, and who may use it.

Every writer and reader of a run's files takes the names from here, so an artifact is one line
below. Writes are atomic (a private temporary file renamed over the target): a job killed at any
instant, or a full disk, leaves the previous version intact. A write that fails raises
`RunDirWriteError`, one line naming the file. One process at a time owns a run directory
(`claim`, an exclusive lock), and it refuses, before writing anything, a directory whose files
belong to another run.

    config.yaml          the resolved config of the run
    metrics.jsonl        one JSON line per finished epoch (what reports and W&B plot)
    summary.json         written once, when the run completes
    status.json          running | completed | failed | interrupted, with host, pid, overrides
                         and, until it completes, the command that resumes the run
    checkpoint.pt        the newest checkpoint; checkpoint.prev.pt the one before it
    wandb_id             the W&B run id, so a resumed run continues the same W&B run
    selection_example.pt one candidate batch with its kept mask (SALN Fig. 7-8)
    final_layer.npz      the classifier's weights at the end (SALN Fig. 9-10)
    forgetting.npz       per-sample forgetting events (Toneva et al.)
    prune.json           what a pruning method removed before training
    prune_scores.npz     its per-sample scores, keep mask and the method's own arrays
    label_noise.json     which training labels were corrupted on purpose
    figures/             figures saln-report draws for this run
    .lock                held by the process that owns the directory
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from saln_exp.errors import UserError

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
STATUS = "status.json"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
WANDB_ID = "wandb_id"
SELECTION_EXAMPLE = "selection_example.pt"
FINAL_LAYER = "final_layer.npz"
FORGETTING = "forgetting.npz"
PRUNE = "prune.json"
PRUNE_SCORES = "prune_scores.npz"
LABEL_NOISE = "label_noise.json"
FIGURES = "figures"
LOCK = ".lock"
SWEEP = "sweep.json"  # at the root of a sweep directory, not in a run directory

# any of these says "a run lives here" (what `resume=` and the report look for)
RUN_MARKERS = (CHECKPOINT, PREVIOUS_CHECKPOINT, STATUS, SUMMARY)
# status.json's `written_by`: saln-exp wrote this run directory (another tool's status.json or
# metrics.jsonl is not a run of ours)
WRITTEN_BY = "saln-exp"
TMP_SUFFIX = ".tmp"
# less free space than this after a failed write: the disk was full
FULL_DISK_BYTES = 1 << 20


class RunDirWriteError(UserError):
    """A run-directory file could not be written (disk full, read-only, directory removed)."""


class RunDirBusyError(UserError):
    """Another process owns the run directory."""


def jsonable(value: Any) -> Any:
    """JSON has no NaN / inf: write them as null so every JSON reader can load the files."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _tmp_name(path: Path) -> Path:
    # per process, so two writers (a sweep's jobs publishing one cache) never share a temporary
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    first_line = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__


def _write_failure(path: Path, err: BaseException) -> str:
    """Why writing `path` failed, in words. A full disk does not always say so: `torch.save`
    reports it as a RuntimeError ("unexpected pos"), so the free space is looked at too."""
    reason = _reason(err)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return reason
    try:
        full = shutil.disk_usage(path.parent).free < FULL_DISK_BYTES
    except OSError:
        full = False
    return f"No space left on device ({reason})" if full else reason


def atomic_write(
    path: Path, write: Callable[[Path], None], keep_previous: Path | None = None
) -> None:
    """`write(tmp)` then rename tmp over `path` (first moving `path` to `keep_previous`, if given).
    On any failure (an OSError, or a writer's own error such as torch.save's RuntimeError on a
    full disk) the temporary file is removed, the old `path` is untouched, and the error is one
    line naming `path`."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as err:
        # the disk is still as full as the failed write found it: look before freeing the space
        failure = _write_failure(path, err)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(err, Exception):  # Ctrl-C, SystemExit: not a write failure
            raise
        raise RunDirWriteError(f"cannot write {path}: {failure}") from None


def write_json(path: Path, payload: dict) -> None:
    """Atomic: a reader never sees half a file, even if the job is killed mid-write."""
    text = json.dumps(jsonable(payload), indent=2, sort_keys=True) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def save_torch(path: Path, obj: Any, keep_previous: Path | None = None) -> None:
    import torch

    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp), keep_previous)


def save_npz(path: Path, **arrays: Any) -> None:
    import numpy as np

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: numpy would append .npz to a path
            np.savez_compressed(fh, **arrays)

    atomic_write(Path(path), write)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; {} (with a warning) when it is missing, empty or damaged."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s); ignoring it", path, type(err).__name__)
        return {}
    return value if isinstance(value, dict) else {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records. A line that is not JSON (the last one, half-written by a job
    killed mid-write) is skipped with a warning that names it."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("%s line %d is not complete JSON (a killed write?); skipped", path, number)
    return records


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file of plain values as a dict; {} (with a warning naming it) when it is missing,
    damaged, or not plain YAML (a `!!python` tag in a file someone else wrote never runs)."""
    import yaml

    path = Path(path)
    if not path.exists():
        return {}
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        _skipped(path, f"not plain YAML ({type(err).__name__}: {_first_line(err)})")
        return {}
    return value if isinstance(value, dict) else {}


def read_arrays(path: Path, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict | None:
    """The named numeric arrays of an .npz file (`optional` ones when present); None with a
    warning naming the file when it cannot be read so: damaged, or crafted (object arrays are
    never unpickled, other contents are refused)."""
    import zipfile

    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in (*names, *(n for n in optional if n in npz))}
        bad = next((n for n, a in arrays.items() if a.dtype.kind not in "biuf"), None)
        if bad is not None:
            raise ValueError(f"{bad} holds {arrays[bad].dtype}, not numbers")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        _skipped(path, f"not the arrays saln-exp writes ({type(err).__name__}: {_first_line(err)})")
        return None
    return arrays


_SKIPPED: set[Path] = set()


def _skipped(path: Path, why: str) -> None:
    """One warning per damaged file, however many readers come across it."""
    if path not in _SKIPPED:
        _SKIPPED.add(path)
        log.warning("%s skipped: %s", path, why)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def is_saln_config(config: Any) -> bool:
    """A saln-exp config (a selector and a dataset, each named): what a run written before
    status.json's `written_by` is recognised by."""
    if not isinstance(config, dict):
        return False
    groups = [config.get("selector"), config.get("dataset")]
    return all(isinstance(g, dict) and isinstance(g.get("name"), str) for g in groups)


class RunFiles:
    """The run directory's files, written through the rules above."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.metrics_path = self.dir / METRICS
        self.summary_path = self.dir / SUMMARY
        self.status_path = self.dir / STATUS

    def path(self, name: str) -> Path:
        return self.dir / name

    def mkdir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirWriteError(
                f"cannot create the run directory {self.dir}: {_reason(err)}"
            ) from None

    def write_config(self, cfg: Any) -> None:
        from omegaconf import OmegaConf

        atomic_write(self.dir / CONFIG, lambda tmp: OmegaConf.save(cfg, tmp, resolve=True))

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        try:
            with self.metrics_path.open("a") as fh:
                fh.write(json.dumps(jsonable(metrics), sort_keys=True) + "\n")
        except OSError as err:
            raise RunDirWriteError(f"cannot write {self.metrics_path}: {_reason(err)}") from None

    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """After a resume: exactly the epochs the checkpoint holds, no duplicates."""
        text = "".join(json.dumps(jsonable(m), sort_keys=True) + "\n" for m in history)
        atomic_write(self.metrics_path, lambda tmp: tmp.write_text(text))

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        return read_json(self.summary_path)

    def read_status(self) -> dict[str, Any]:
        return read_json(self.status_path)

    def write_status(self, status: str, **extra: Any) -> None:
        """Status with what was there before (overrides, start time, and until the run completes
        the command that resumes it) carried over."""
        previous = self.read_status()
        unfinished = {"resume": previous["resume"]} if "resume" in previous else {}
        payload = {
            **({} if status == "completed" else unfinished),
            "overrides": previous.get("overrides", []),
            "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
            "status": status,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
            **extra,
            "written_by": WRITTEN_BY,
        }
        write_json(self.status_path, payload)

    def try_write_status(self, status: str, **extra: Any) -> None:
        """write_status where failing to write must not hide the error being reported."""
        try:
            self.write_status(status, **extra)
        except RunDirWriteError as err:
            log.warning("status not recorded: %s", err)

    def read_config(self) -> dict[str, Any]:
        """The run's resolved config: summary.json's (complete runs), else config.yaml's."""
        return self.read_summary().get("config") or read_yaml(self.dir / CONFIG)

    def written_by_saln_exp(self) -> bool:
        """Whether saln-exp wrote this run: status.json says so, or (runs written before it did)
        the config is a saln-exp config."""
        if not self.dir.is_dir():
            return False
        return self.read_status().get("written_by") == WRITTEN_BY or is_saln_config(
            self.read_config()
        )

    def holds_a_run(self) -> bool:
        return self.dir.is_dir() and any((self.dir / name).exists() for name in RUN_MARKERS)

    def holds_results(self) -> bool:
        """Results a fresh run would overwrite: a summary, or at least one epoch of metrics."""
        return self.summary_path.exists() or bool(self.read_metrics())

    def remove_stale_temporaries(self) -> None:
        """Temporary files of writers that were killed (only the lock holder calls this)."""
        for tmp in self.dir.glob(f".*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    def owner_elsewhere(self) -> str | None:
        """`pid P on H` when another process owns the directory (holds its lock), else None."""
        lock = FileLock(self.dir / LOCK)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            owner = self.read_status()
            return f"pid {owner.get('pid')} on {owner.get('host')}"
        except OSError:  # no such directory, read-only: nobody can be writing there
            return None
        lock.release()
        return None

    @contextlib.contextmanager
    def claimed(self) -> Iterator[None]:
        """Own the directory for the duration: a second process is refused in one line."""
        self.mkdir()
        lock = FileLock(self.dir / LOCK)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            owner = self.read_status()
            who = f" (pid {owner.get('pid')} on {owner.get('host')})" if owner.get("pid") else ""
            raise RunDirBusyError(
                f"another saln-train process{who} is running in {self.dir}; wait for it to end, "
                "or choose another hydra.run.dir"
            ) from None
        except OSError as err:
            raise RunDirWriteError(f"cannot write {self.dir / LOCK}: {_reason(err)}") from None
        try:
            self.remove_stale_temporaries()
            yield
        finally:
            lock.release()
