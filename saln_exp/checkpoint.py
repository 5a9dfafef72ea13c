"""Checkpoint files of a run directory: atomic writes, the last two kept, a damaged one skipped.

`checkpoint.pt` is written to a temporary file and renamed over the old one (which becomes
`checkpoint.prev.pt` first), so a job killed at any instant leaves at least one complete
checkpoint. On load, a file that cannot be read is reported in one line and the previous one used.
Checkpoints hold tensors and plain Python values only and are read with `weights_only=True`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from saln_exp.errors import ConfigError, UserError
from saln_exp.resume import recorded_command
from saln_exp.rundir import CHECKPOINT, PREVIOUS_CHECKPOINT, save_torch
from saln_exp.safe_load import load_plain

log = logging.getLogger(__name__)

LATEST, PREVIOUS = CHECKPOINT, PREVIOUS_CHECKPOINT
# keys that may differ between the run that wrote a checkpoint and the one resuming it
RESUMABLE_CHANGES = (
    "paths", "resume", "logger", "tags", "metric", "trainer.progress", "trainer.epochs",
    "trainer.log_every_steps", "trainer.checkpoint", "trainer.checkpoint_every_steps", "eval.batch_size",
    "dataset.storage", "dataset.workers",  # where the pixels come from, not which
    "selector_choice", "paper_rows",  # labels for the report, not settings (older runs lack them)
    "trainer.dist_timeout_s",  # how long ranks wait for each other, not what they compute
)  # fmt: skip
# keys added to conf/ since checkpoints took their present form (read with weights_only), each
# with the value that does what runs did before the key existed. A checkpoint whose config lacks
# such a key resumes when the key has that value now; with another value the run comes from an
# older version and is refused in one line. A key added to conf/ goes here too.
OLDER_RUNS_BEHAVED_AS: dict[str, Any] = {
    "selector.scope": "global",  # one process: every sample of the batch competes
    "trainer.threads": None,  # torch's threads as the process found them
    "dataset.normalize": True,  # MNIST was standardised
    "debug_name": None,  # not a debug run
}


class Checkpoints:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.latest, self.previous = self.dir / LATEST, self.dir / PREVIOUS

    def exists(self) -> bool:
        return self.latest.exists() or self.previous.exists()

    def save(self, state: dict[str, Any]) -> None:
        """The new checkpoint is complete on disk before the old one is moved aside; a write
        that fails (disk full) leaves both old ones as they were."""
        save_torch(self.latest, state, keep_previous=self.previous)

    def load(self) -> dict[str, Any] | None:
        """The newest readable checkpoint, or None when there is none."""
        failures = []
        for path in (self.latest, self.previous):
            if not path.exists():
                continue
            try:
                # weights_only: tensors and plain containers only, so a crafted file in someone's
                # run directory cannot run code on whoever resumes it
                state = load_plain(path)
                if not isinstance(state, dict) or "progress" not in state:
                    raise ValueError("not a saln-exp checkpoint")
            except Exception as err:  # truncated zip, bad pickle, wrong file
                failures.append(f"{path.name}: {type(err).__name__}")
                first_line = (str(err).strip().splitlines() or [""])[0][:200]
                log.warning("checkpoint %s is unreadable (%s: %s); trying the previous one",
                            path, type(err).__name__, first_line)  # fmt: skip
                continue
            return state
        if failures:
            raise UserError(
                f"no readable checkpoint in {self.dir} ({'; '.join(failures)}); delete them to start over"
            )
        return None

    def saved_config(self) -> dict[str, Any] | None:
        state = self.load()
        return None if state is None else state.get("config")


_ABSENT = object()


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys that keep `current` from continuing the run of `saved`."""
    changed, lacking = compare(saved, current)
    return changed + lacking


def compare(
    saved: dict[str, Any], current: dict[str, Any], prefix: str = ""
) -> tuple[list[str], list[str]]:
    """(dotted keys whose values differ, keys the saved config lacks and whose value now is not
    what older runs did), ignoring the keys a resumed run may change."""
    changed, lacking = [], []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if any(dotted == k or dotted.startswith(k + ".") for k in RESUMABLE_CHANGES):
            continue
        a, b = saved.get(key, _ABSENT), current.get(key)
        if a is _ABSENT:
            if OLDER_RUNS_BEHAVED_AS.get(dotted, _ABSENT) != b:
                lacking.append(dotted)
        elif isinstance(a, dict) and isinstance(b, dict):
            more_changed, more_lacking = compare(a, b, dotted + ".")
            changed, lacking = changed + more_changed, lacking + more_lacking
        elif a != b:
            changed.append(dotted)
    return changed, lacking


def _as_override(value: Any) -> str:
    """How the command line writes a value: null, true, 300, global."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return str(value)


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")


def check_same_run(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    changed, lacking = compare(saved, current)
    if changed:
        command = recorded_command(run_dir)
        how = (f"to resume it, run: {command}" if command
               else "continue it with the settings it was started with")  # fmt: skip
        raise ConfigError(
            f"{run_dir} holds a checkpoint of another configuration (differs in "
            f"{_listed(changed + lacking)}); {how}; or choose a new hydra.run.dir"
        )
    if lacking:
        known = [k for k in lacking if k in OLDER_RUNS_BEHAVED_AS]
        how = (
            "resume it with "
            + " ".join(f"{k}={_as_override(OLDER_RUNS_BEHAVED_AS[k])}" for k in known)
            if known == lacking
            else "finish it with the version that wrote it"
        )
        raise ConfigError(
            f"{run_dir} holds a run of an older version of saln-exp, whose config has no "
            f"{_listed(lacking)}; {how}, or choose a new hydra.run.dir"
        )
