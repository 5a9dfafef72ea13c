"""What a checkpoint holds of a run in progress besides its components' own `state_dict`s: the
counters (`Progress`) and the global random streams (the epoch order's is the selection's).

Both are stored as tensors and plain Python values, so checkpoints load with `weights_only=True`
(checkpoint.py). An older run's checkpoint, from before the selection's state was one entry,
still resumes (`selection_state`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saln_exp.epoch_metrics import TIME_PHASES, EpochStats


@dataclass
class Progress:
    """Counters that survive a resume."""

    epoch: int = 0  # completed epochs
    cursor: int = 0  # candidate batches done in the current epoch
    order: Tensor | None = None  # the current epoch's sample order (kept for mid-epoch resume)
    steps: int = 0
    seen: int = 0
    backprop: int = 0
    overflow_at_epoch_start: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys((*TIME_PHASES, "wall"), 0.0)
    )
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_stats: EpochStats = field(default_factory=EpochStats)

    @property
    def mid_epoch(self) -> bool:
        """An epoch is under way (its order drawn, not all of its batches trained)."""
        return self.order is not None

    def state_dict(self) -> dict[str, Any]:
        # the order tensor as it is: asdict would deep-copy it
        return {**asdict(self), "order": self.order, "epoch_stats": asdict(self.epoch_stats)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        saved = dict(state)
        saved["epoch_stats"] = EpochStats(**saved["epoch_stats"])
        return cls(**saved)


def rng_state() -> dict[str, Any]:
    """The global streams (python, numpy, torch, CUDA). The epoch order's stream is the
    selection's (`selection_state`)."""
    return {
        "python": random.getstate(),
        "numpy": numpy_rng_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    set_numpy_rng_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def selection_state(state: dict[str, Any], progress: Progress, batch_size: int) -> dict[str, Any]:
    """The selection's part of a checkpoint (`BatchSelector.state_dict`). A checkpoint written
    before the trainer ran on the selection API kept its pieces under their own keys: the
    selector's state, the staged samples (`accumulator`, staged up to the run's batch size) and
    the epoch-order stream (`rng["data"]`); the epochs started follow from the progress."""
    if "selection" in state:
        return state["selection"]
    staged = state["accumulator"]
    return {
        "selector": state["selector"],
        "accumulator": staged,
        "accumulator_size": None if staged is None else batch_size,
        "epochs_started": progress.epoch + int(progress.mid_epoch),
        "order": state["rng"]["data"],
    }


def numpy_rng_state() -> tuple:
    """numpy's global RNG state with its key array as a tensor (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def set_numpy_rng_state(state: tuple) -> None:
    kind, keys, pos, has_gauss, cached = state
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
