"""The one entry point: `saln-train` / `python -m saln_exp.train`, a Hydra app over conf/.

validate -> seed -> build data, model, selector -> fit -> write summary -> return the metric.
A user error (bad value, missing data) prints one line and exits 2. In a multirun a failing job
is recorded as failed and returns NaN, so the other jobs still run; the sweep callback then lists
the failures and makes the sweep exit non-zero.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import traceback
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from saln_exp import PROJECT_ROOT
from saln_exp.checkpoint import Checkpoints
from saln_exp.config import resolve_device, validate
from saln_exp.data import build_data
from saln_exp.errors import UserError
from saln_exp.metrics import summarize
from saln_exp.models import build_model
from saln_exp.prune import prune_dataset
from saln_exp.report.console import print_run_summary
from saln_exp.selectors import build_selector
from saln_exp.sweep import hydra_runtime
from saln_exp.tracking import RunFiles, Tracking, git_commit
from saln_exp.trainer import Trainer

log = logging.getLogger("saln_exp")


def seed_everything(cfg: DictConfig) -> int:
    """Seed python, numpy and torch. `seed: null` draws one and writes it into the config."""
    seed = cfg.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") % (2**31)
        with open_dict(cfg):
            cfg.seed = seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if cfg.get("deterministic", True):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = bool(cfg.trainer.get("cudnn_benchmark", True))
    return seed


def adopt_checkpoint_seed(cfg: DictConfig, run_dir: Path) -> None:
    """`seed: null` draws a seed; a resumed run must continue with the one drawn the first time."""
    checkpoints = Checkpoints(run_dir)
    if cfg.seed is None and checkpoints.exists():
        saved = checkpoints.saved_config() or {}
        with open_dict(cfg):
            cfg.seed = saved.get("seed")


def apply_smoke(cfg: DictConfig) -> None:
    """`smoke=true`: the same experiment on a synthetic stand-in of the same shape, a few steps."""
    if not cfg.get("smoke"):
        return
    from saln_exp.data.synthetic import SHAPES

    with open_dict(cfg):
        channels, size, classes = SHAPES.get(cfg.dataset.name, (1, 8, 10))
        stand_in = {  # the real dataset's channels and classes, at most 32x32 (resnet18_imagenet's minimum)
            "name": "synthetic", "like": None, "n_train": 96, "n_test": 48, "noise": 1.0,
            "channels": channels, "image_size": min(size, 32), "num_classes": classes, "download": False,
            "batch_size": min(int(cfg.dataset.batch_size), 32),
        }  # fmt: skip
        cfg.dataset.merge_with(stand_in)
        if cfg.selector.get("candidate_batch_size"):
            cfg.selector.candidate_batch_size = min(int(cfg.selector.candidate_batch_size), 32)
        cfg.trainer.epochs = min(int(cfg.trainer.epochs), 2)
        cfg.eval.batch_size = 64
        if "reference" in cfg.selector:
            cfg.selector.reference.epochs = 1
        if cfg.model.get("pretrained"):
            cfg.model.pretrained = (
                False  # no weights offline; the architecture is what is smoke-tested
            )
        if cfg.selector.get("features") == "pretrained":
            cfg.selector.backbone_weights = None
            cfg.selector.feature_size = None  # the backbone sees the stand-in's 32x32
        if cfg.prune.get("name", "none") != "none":  # scoring models: one epoch, one of each
            cfg.prune.epochs = min(int(cfg.prune.epochs), 1)
            if "repeats" in cfg.prune:
                cfg.prune.repeats = 1
            if "folds" in cfg.prune:
                cfg.prune.folds = 2


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Build everything from the config and fit; return the run summary."""
    validate(cfg)
    adopt_checkpoint_seed(cfg, run_dir)
    seed = seed_everything(cfg)
    device = resolve_device(cfg.device)
    selector = build_selector(cfg.selector, seed)  # option errors surface before data is read
    data = build_data(cfg.dataset, cfg.paths, device)
    data, prune_record = prune_dataset(cfg, data, device, run_dir)
    model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
    if cfg.trainer.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    runtime = hydra_runtime()
    tracking = Tracking(cfg, run_dir, name=runtime.run_name, group=runtime.group)
    try:
        trainer = Trainer(cfg, data, model, selector, run_dir, device, tracking)
        history = trainer.fit()
        summary = {
            "status": "completed",
            "dataset": cfg.dataset.name,
            "model": cfg.model.name,
            "selector": cfg.selector.name,
            "filter_ratio": float(cfg.selector.filter_ratio),
            "seed": seed,
            "experiment": cfg.get("experiment_name"),
            "device": str(device),
            "metric": cfg.metric,
            "metric_value": history[-1][cfg.metric],
            "git_commit": git_commit(),
            **summarize(history, cfg.eval.get("target_acc")),
            **trainer.forgetting.summary(data.train.indices),
            **prune_record,
            "config": _plain(cfg),
        }
        log_figures_to_wandb(tracking, summary, run_dir)
        tracking.complete(summary)
        return summary
    except BaseException as err:
        tracking.fail(err)
        raise


def log_figures_to_wandb(tracking: Tracking, summary: dict, run_dir: Path) -> None:
    """The run's report figures (curves, kept images, final layer, accumulation) to a live W&B run.
    Drawn only when W&B is on; a figure that fails is a warning, never a failed run."""
    if tracking.wandb is None:
        return
    from saln_exp.report.figures import run_figures

    try:
        tracking.files.write_summary(summary)  # the figures read the finished run's files
        tracking.files.write_status("completed")
        tracking.log_images(run_figures(run_dir))
    except Exception as err:
        log.warning("figures not logged to W&B: %s", err)


def _plain(cfg: DictConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def holds_a_run(run_dir: Path) -> bool:
    markers = ("checkpoint.pt", "checkpoint.prev.pt", "status.json", "summary.json")
    return run_dir.is_dir() and any((run_dir / name).exists() for name in markers)


def run(cfg: DictConfig) -> float:
    """The task wrapper: record the outcome in status.json whatever happens."""
    apply_smoke(cfg)
    run_dir = Path(cfg.resume) if cfg.get("resume") else Path(cfg.paths.output_dir)
    if cfg.get("resume") and not holds_a_run(run_dir):  # a typo must not start a new run there
        print(
            f"error: resume={cfg.resume} holds no run (no checkpoint.pt, status.json or "
            "summary.json); give the directory of a run to continue",
            file=sys.stderr,
        )
        sys.exit(2)
    files = RunFiles(run_dir)
    runtime = hydra_runtime()
    files.write_status("running", overrides=runtime.overrides)
    try:
        summary = train(cfg, run_dir)
    except UserError as err:
        files.write_status("failed", error=str(err), overrides=runtime.overrides)
        if runtime.multirun:
            log.error("job failed: %s", err)
            return math.nan
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        files.write_status(
            "failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
            overrides=runtime.overrides,
        )  # fmt: skip
        if runtime.multirun:
            log.exception("job crashed")
            return math.nan
        raise
    except BaseException as err:  # KeyboardInterrupt, SystemExit: resumable, not failed
        files.write_status("interrupted", error=type(err).__name__, overrides=runtime.overrides)
        raise
    print_run_summary(summary, run_dir)
    return float(summary["metric_value"])


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
