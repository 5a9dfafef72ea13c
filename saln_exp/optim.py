"""Optimizer and learning-rate scheduler from their config groups' plain values (`_partial_`
targets, instantiated by Hydra's `instantiate`, which takes a plain dict)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate


def build_optimizer(options: Mapping[str, Any], params) -> torch.optim.Optimizer:
    return instantiate({k: v for k, v in options.items() if k != "name"})(params)


def build_scheduler(options: Mapping[str, Any], optimizer: torch.optim.Optimizer):
    if options.get("_target_") is None:
        return None
    return instantiate({k: v for k, v in options.items() if k != "name"})(optimizer)
