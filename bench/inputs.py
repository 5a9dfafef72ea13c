"""What the sections measure on: configs composed as `saln-train` composes them, synthetic data
stored as the real loaders store it, backbone-like features, and one selection step as the
trainer runs it. Built from saln_exp's public API only, so the benchmark measures the package's
own code paths rather than copies of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from saln_exp.config import compose_config, learner_recipe, plain
from saln_exp.data import build_data
from saln_exp.data.base import DataBundle
from saln_exp.models import build_model
from saln_exp.selectors import (
    SELECTORS,
    Batch,
    BatchView,
    RunContext,
    Selection,
    Selector,
    ViewSources,
)
from saln_exp.train import seed_everything

# a benchmark run logs nowhere, draws no progress bar and writes no checkpoints
QUIET = ("logger=none", "trainer.progress=false", "trainer.checkpoint=false")


def run_config(workdir: Path, *overrides: str, data_dir: Path | None = None) -> DictConfig:
    """The real config tree with `overrides`, every output under `workdir`."""
    cfg = compose_config([*QUIET, *overrides])
    cfg.paths.output_dir = str(workdir / "run")
    cfg.paths.log_dir = str(workdir / "logs")
    cfg.paths.cache_dir = str(workdir / "cache")
    cfg.paths.data_dir = str(data_dir or workdir / "data")
    return cfg


def synthetic_config(
    workdir: Path, model: str, like: str, batch: int, images: int, *extra: str
) -> DictConfig:
    """A run on `images` synthetic training images shaped like dataset `like`."""
    return run_config(
        workdir,
        "dataset=synthetic",
        f"dataset.like={like}",
        f"dataset.n_train={images}",
        "dataset.n_test=32",
        f"dataset.batch_size={batch}",
        f"model={model}",
        *extra,
    )


def as_uint8(data: DataBundle) -> None:
    """Store training images as uint8, as the real MNIST / CIFAR loaders do (the synthetic
    loader stores floats, which would make the per-batch conversion cost disappear)."""
    data.train.images = (data.train.images.float() * 255).round().clamp(0, 255).to(torch.uint8)


def data_and_model(
    cfg: DictConfig, device: torch.device, uint8: bool = True
) -> tuple[DataBundle, nn.Module]:
    """The run's data and a fresh model on `device`, seeded as a run seeds them."""
    seed_everything(cfg)
    data = build_data(cfg.dataset, cfg.paths, device)
    if uint8:
        as_uint8(data)
    return data, build_model(cfg.model, data.in_shape, data.num_classes).to(device)


def run_context(
    cfg: DictConfig, data: DataBundle, model: nn.Module, device: torch.device
) -> RunContext:
    """What `Selector.prepare` gets in a run, with the caches under the run's paths."""
    return RunContext(
        data, model, device, cfg.paths.cache_dir, cfg.paths.output_dir,
        epochs=int(cfg.trainer.epochs), eval_batch_size=int(cfg.eval.batch_size),
        dataset=plain(cfg.dataset), learner=learner_recipe(cfg),
    )  # fmt: skip


def unseeded_context(workdir: Path, device: torch.device) -> RunContext:
    """The run context of a tiny synthetic run, for questions about a run's setup. Not seeded:
    seeding turns on deterministic algorithms process-wide, which section 1 is timed without."""
    cfg = synthetic_config(workdir, "lenet", "mnist", 16, 16)
    data = build_data(cfg.dataset, cfg.paths, device)
    model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
    return run_context(cfg, data, model, device)


def auto_solver(ctx: RunContext) -> str:
    """The solver SALN's `solver=auto` becomes in this context, as `SALN.prepare` picks it (a
    pixel-feature SALN prepares nothing else), so the benchmark keeps no copy of the rule."""
    probe = SELECTORS["saln"](features="pixels", solver="auto")
    probe.prepare(ctx)
    return probe.solver


def realistic_features(
    n: int, d: int, signed: bool, seed: int, rank: int = 32, classes: int = 10
) -> Tensor:
    """Backbone-like features: class clusters in a low-rank space plus noise, post-ReLU
    (nonnegative, correlated) unless `signed`. float32, as a frozen backbone emits them."""
    g = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(classes, rank, generator=g)
    z = centers[torch.randint(classes, (n,), generator=g)] + torch.randn(n, rank, generator=g)
    x = z @ (torch.randn(rank, d, generator=g) / rank**0.5) + 0.5 * torch.randn(n, d, generator=g)
    return x if signed else torch.relu(x)


def select_once(
    selector: Selector, batch: Batch, model: nn.Module, sources: ViewSources
) -> Selection:
    """One selection step as the trainer runs it: a fresh lazy view, then `select`."""
    return selector.select(batch, BatchView(batch, model, sources))


def train_step_fn(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Callable[[], None]:
    """One training step on the whole batch: what selection has to cost less than."""

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
