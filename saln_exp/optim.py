"""Optimizer and learning-rate scheduler from their config groups (`_partial_` targets)."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    options = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "name"])
    return instantiate(options)(params)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    if cfg.get("_target_") is None:
        return None
    options = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "name"])
    return instantiate(options)(optimizer)
