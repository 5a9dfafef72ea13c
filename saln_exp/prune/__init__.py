"""Dataset-level pruning before training (the `prune` config group), composable with any online
selector: the training split is reduced once, then the selector works batch by batch as usual.

`prune_dataset` is the only entry point; `prune=none` returns the data untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from saln_exp.data.base import DataBundle

METHODS: dict[str, Any] = {}  # name -> callable(cfg, data, device, run_dir) -> (kept positions, record)


def prune_dataset(cfg: DictConfig, data: DataBundle, device: torch.device, run_dir: Path) -> tuple[DataBundle, dict[str, Any]]:
    """Return the data with a pruned training split and numbers worth putting in the summary."""
    name = cfg.prune.get("name", "none")
    if name == "none":
        return data, {}
    raise NotImplementedError(f"prune={name} is not available yet")
