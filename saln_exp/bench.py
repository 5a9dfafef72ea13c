"""saln-bench: does selection cost less than it saves? Speed and memory, measured side by side.

Five measurements, each against the thing it has to beat, in one process (ratios are taken
round by round, so a noisy machine slows both sides of a ratio alike):

1. SALN's selection step against the paper's Algorithm 1 as printed (same features, same kept
   set), per batch size and feature width, with the Fiedler gap that says whether the kept set
   is well defined at all.
2. Every selector's time per candidate batch (including the inference forward its view runs)
   as a fraction of one training step of the model at the same batch size.
3. The runner (`Trainer.run_epoch`, selector=none) against the plain PyTorch loop a user would
   write (torchvision-style Dataset + per-sample transforms + DataLoader workers).
4. Peak memory (max RSS) of real `saln-train` runs, each in its own subprocess.
5. The "no second forward" question: inference forward + training step on the kept samples
   (what the runner does) against one autograd forward over the whole batch + backward of the
   kept samples' loss.

Writes `<out>/results.json` and `<out>/results.md` and prints the Markdown table, with PASS /
MISS against each target and the machine it ran on. `--quick` runs tiny sizes (used by tests).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import scipy.linalg
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from saln_exp import PROJECT_ROOT
from saln_exp.bench_epochs import bench_epochs, epochs_markdown
from saln_exp.config import resolve_device
from saln_exp.data import build_data
from saln_exp.data.augment import assist_cifar_batched, assist_cifar_per_sample
from saln_exp.data.base import IMAGENET_MEAN, IMAGENET_STD, BatchPipeline, DataBundle
from saln_exp.features import FeatureStore, build_backbone
from saln_exp.models import build_model
from saln_exp.optim import build_optimizer
from saln_exp.paper_algorithms import saln_algorithm1
from saln_exp.selectors import (
    SELECTORS,
    Batch,
    BatchView,
    RunContext,
    Selection,
    Selector,
    ViewSources,
    build_selector,
)
from saln_exp.selectors.saln import (
    dense_is_faster,
    dense_laplacian,
    normalize_rows,
    single_blas_thread,
)
from saln_exp.train import seed_everything
from saln_exp.trainer import Trainer

SCHEMA_VERSION = 1
BUDGET_SECONDS = 600.0  # `make bench` must finish in 10 minutes on a 2-core CPU


# -- settings ----------------------------------------------------------------------------------------
@dataclass
class RunnerCase:
    label: str
    model: str
    like: str  # synthetic stand-in of this dataset's shape
    batch: int
    images: int
    augment: bool
    rounds: int


FCNET_4_5 = ("experiment=assist_4_5",)  # ASSIST Table 4.5's recipe (500 epochs in the paper)
LENET_4_4 = ("experiment=assist_4_4", "model=lenet")  # Table 4.4's LeNet rows (300 epochs)
RECIPE_EPOCHS = {"FCNet": 500, "LeNet": 300}


@dataclass
class Settings:
    # 1. SALN vs Algorithm 1
    saln_sizes: tuple[int, ...] = (128, 256, 512, 1024)
    saln_widths: tuple[int, ...] = (512, 2048)
    saln_signed: tuple[int, int] = (1024, 512)  # one signed-feature case (B, d)
    saln_rounds: int = 7  # distinct seeded batches per case, each timed once per method
    saln_eigh_widths: tuple[int, ...] = (512,)  # also time solver=eigh (the exact dense torch path)
    saln_warm: bool = True  # time each call right after an untimed one: steady state, warm threads
    # 2. selector cost per candidate batch
    selector_batch: int = 64
    selector_models: tuple[tuple[str, str], ...] = (
        ("lenet", "mnist"),
        ("fcnet", "mnist"),
        ("resnet18", "cifar10"),
    )
    selector_rounds: dict[str, int] = field(
        default_factory=lambda: {"lenet": 5, "fcnet": 5, "resnet18": 2}
    )
    backbone: str = "resnet50"
    backbone_size: int = 224
    backbone_rounds: int = 1
    # 3. runner vs plain loop
    # (ResNet-18 steps take ~1 s on 2 cores: short epochs, more rounds, for paired ratios)
    runner_cases: tuple[RunnerCase, ...] = (
        RunnerCase(
            "LeNet, MNIST-shaped", "lenet", "mnist", 128, images=2048, augment=False, rounds=5
        ),
        RunnerCase(
            "LeNet, CIFAR-shaped + aug",
            "lenet",
            "cifar10",
            128,
            images=1024,
            augment=True,
            rounds=3,
        ),
        RunnerCase(
            "ResNet-18, CIFAR-shaped", "resnet18", "cifar10", 32, images=64, augment=False, rounds=6
        ),
        RunnerCase(
            "ResNet-18, CIFAR-shaped + aug",
            "resnet18",
            "cifar10",
            32,
            images=64,
            augment=True,
            rounds=6,
        ),
    )
    plain_workers: tuple[int, ...] = (0, 2)
    # 4. peak memory
    memory_default_args: tuple[str, ...] = ()
    memory_cifar_args: tuple[str, ...] = (
        "dataset=synthetic",
        "dataset.like=cifar10",
        "model=resnet18",
        "dataset.n_train=512",
        "dataset.n_test=256",
        "dataset.batch_size=128",
        "trainer.epochs=1",
        "eval.batch_size=256",
    )
    # 5. selective backward
    selective_cases: tuple[tuple[str, str, int], ...] = (
        ("lenet", "mnist", 256),
        ("resnet18", "cifar10", 32),
    )
    selective_ratios: tuple[float, ...] = (0.5, 0.8)
    selective_rounds: dict[str, int] = field(default_factory=lambda: {"lenet": 5, "resnet18": 3})
    # 6. epoch time of the ASSIST MNIST recipes on the real MNIST: (label, overrides, epochs,
    # also run with reuse off)
    epoch_cases: tuple[tuple[str, tuple[str, ...], int, bool], ...] = (
        ("FCNet100, none", (*FCNET_4_5, "model.hidden=100", "filtering=none"), 4, True),
        ("FCNet100, batchwise", (*FCNET_4_5, "model.hidden=100", "filtering=batchwise"), 4, True),
        ("FCNet1000, none", (*FCNET_4_5, "model.hidden=1000", "filtering=none"), 3, False),
        (
            "FCNet1000, batchwise",
            (*FCNET_4_5, "model.hidden=1000", "filtering=batchwise"),
            3,
            False,
        ),
        ("FCNet3000, none", (*FCNET_4_5, "model.hidden=3000", "filtering=none"), 3, False),
        (
            "FCNet3000, batchwise",
            (*FCNET_4_5, "model.hidden=3000", "filtering=batchwise"),
            3,
            False,
        ),
        ("LeNet, none", (*LENET_4_4, "filtering=none"), 3, True),
        ("LeNet, batchwise", (*LENET_4_4, "filtering=batchwise"), 3, False),
        ("LeNet, epochwise", (*LENET_4_4, "filtering=epochwise"), 3, True),
        ("LeNet, epoch + batch", (*LENET_4_4, "filtering=epoch_batch"), 3, False),
    )


def quick_settings() -> Settings:
    """Tiny sizes: every section runs and every file is written, in well under a minute."""
    return Settings(
        saln_sizes=(64, 256),
        saln_widths=(512,),
        saln_signed=(128, 64),
        saln_rounds=2,
        saln_eigh_widths=(),
        selector_batch=16,
        selector_models=(("lenet", "mnist"),),
        selector_rounds={"lenet": 1},
        backbone="resnet18",
        backbone_size=32,
        backbone_rounds=1,
        runner_cases=(
            RunnerCase(
                "LeNet, MNIST-shaped",
                "lenet",
                "mnist",
                batch=32,
                images=128,
                augment=False,
                rounds=1,
            ),
            RunnerCase(
                "LeNet, CIFAR-shaped + aug",
                "lenet",
                "cifar10",
                batch=16,
                images=32,
                augment=True,
                rounds=1,
            ),
        ),
        plain_workers=(0,),
        memory_default_args=("trainer.epochs=1",),
        memory_cifar_args=(
            "dataset=synthetic",
            "dataset.like=cifar10",
            "model=resnet18",
            "dataset.n_train=32",
            "dataset.n_test=16",
            "dataset.batch_size=16",
            "trainer.epochs=1",
            "eval.batch_size=32",
        ),
        selective_cases=(("lenet", "mnist", 32),),
        selective_ratios=(0.5,),
        selective_rounds={"lenet": 2},
        epoch_cases=(
            ("FCNet100, none", (*FCNET_4_5, "model.hidden=100", "filtering=none"), 2, True),
        ),
    )


# -- timing ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def summary(samples: list[float], scale: float = 1.0) -> dict[str, float]:
    """Median and spread (quartiles, min, max) of repeated measurements."""
    a = np.asarray(samples, dtype=float) * scale
    if a.size == 0:
        return {
            "median": float("nan"),
            "q1": float("nan"),
            "q3": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
            "n": 0,
        }
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def interleaved(
    variants: dict[str, Callable[[], Any]],
    rounds: int,
    device: torch.device,
    warmup: bool | list[str] = True,
) -> dict[str, list[float]]:
    """Time each variant once per round, alternating the order between rounds, so slow phases
    of a noisy machine hit all variants alike. The warm-up call (every variant, or the listed
    ones: first calls build kernels and caches) is not recorded."""
    names = list(variants)
    for name in names if warmup is True else (warmup or []):
        timed(variants[name], device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds, _ = timed(variants[name], device)
            times[name].append(seconds)
    return times


def round_ratios(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    return summary([a / b for a, b in zip(numerator, denominator, strict=True) if b > 0])


# -- configs and data --------------------------------------------------------------------------------
def compose_config(overrides: list[str], workdir: Path) -> DictConfig:
    """The real config tree with `overrides`; outputs under `workdir`, no W&B, no progress bars."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(workdir / "run")
        cfg.paths.log_dir = str(workdir / "logs")
        cfg.paths.cache_dir = str(workdir / "cache")
        cfg.paths.data_dir = str(workdir / "data")
        cfg.trainer.progress = False
        cfg.trainer.checkpoint = False
    return cfg


def synthetic_cfg(
    workdir: Path, model: str, like: str, batch: int, images: int, *extra: str
) -> DictConfig:
    return compose_config(
        [
            "dataset=synthetic",
            f"dataset.like={like}",
            f"dataset.n_train={images}",
            "dataset.n_test=32",
            f"dataset.batch_size={batch}",
            f"model={model}",
            *extra,
        ],
        workdir,
    )


def as_uint8(data: DataBundle) -> None:
    """Store training images as uint8, as the real MNIST / CIFAR loaders do."""
    data.train.images = (data.train.images.float() * 255).round().clamp(0, 255).to(torch.uint8)


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


def by_batch_index(values: Tensor, batch: Batch) -> Tensor:
    return values[batch.index]


def batch_features(features: Tensor, index: Tensor) -> Tensor:
    return features


def auto_solver(device: torch.device) -> str:
    """What `SALN.prepare` picks for solver=auto (prepare itself would load a backbone)."""
    return "eigh" if device.type == "cuda" else "lanczos"


# -- 1. SALN vs Algorithm 1 --------------------------------------------------------------------------
def exact_reference(features: Tensor, keep: int) -> dict[str, Any]:
    """Float64 dense solve: the exact kept set, the Fiedler gap and how close the top-k cut is."""
    unit = normalize_rows(features.double())
    laplacian = dense_laplacian(unit, "cosine").numpy()
    values, vectors = scipy.linalg.eigh(laplacian, subset_by_index=[0, 2], driver="evr")
    fiedler = np.abs(vectors[:, 1])
    order = np.argsort(fiedler)[::-1]
    scale = max(1.0, float(np.abs(np.diag(laplacian)).max()))
    gap = float(min(values[1] - values[0], values[2] - values[1]))
    margin = (
        float(fiedler[order[keep - 1]] - fiedler[order[keep]])
        if keep < len(fiedler)
        else float("inf")
    )
    return {
        "kept": set(order[:keep].tolist()),
        "lambda": values.tolist(),
        "gap": gap,
        "margin": margin,
        # a repeated eigenvalue or a tie at the top-k cut: no unique kept set to agree on
        "ambiguous": gap <= 1e-9 * scale or margin <= 1e-12,
    }


def bench_saln(
    st: Settings, device: torch.device, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    cases = [(n, d, False) for d in st.saln_widths for n in st.saln_sizes]
    cases.append((*st.saln_signed, True))
    rows = []
    dummy = nn.Identity()
    for n, d, signed in cases:
        selector = SELECTORS["saln"](filter_ratio=0.8, features="pretrained")
        selector.solver = auto_solver(device)
        dense = SELECTORS["saln"](filter_ratio=0.8, features="pretrained", solver="eigh")
        rounds = st.saln_rounds * (2 if n <= 256 else 1)  # small batches are cheap: more rounds
        batches = []
        for r in range(rounds + 1):  # round 0 is a warm-up
            feats = realistic_features(n, d, signed, seed=1000 * n + d + r)
            batch = Batch(torch.arange(n), feats, torch.zeros(n, dtype=torch.long))
            # the batch's features as Algorithm 1 gets them (no gather from a dataset-wide store)
            sources = ViewSources(pretrained_features=partial(batch_features, feats.to(device)))
            batches.append((feats, batch, sources))
        # Algorithm 1 vs SALN, alternating; nothing else runs in between (the checks below use
        # multi-threaded BLAS, whose threads keep spinning for a while and would bill the next call)
        times: dict[str, list[float]] = {"alg1": [], "saln": [], "eigh": []}
        outputs: list[dict[str, Any]] = []
        for r, (feats, batch, sources) in enumerate(batches):
            variants = {
                "alg1": partial(saln_algorithm1, feats, 0.8),
                "saln": partial(select_once, selector, batch, dummy, sources),
            }
            out = {}
            for name in variants if r % 2 == 0 else list(variants)[::-1]:
                if st.saln_warm:  # BLAS / OpenMP threads awake, caches hot: the same for both
                    variants[name]()
                seconds, out[name] = timed(variants[name], device)
                if r > 0:
                    times[name].append(seconds)
            outputs.append(out)
        if d in st.saln_eigh_widths:  # the exact dense path, for reference
            for _, batch, sources in batches[1:]:
                eigh = partial(select_once, dense, batch, dummy, sources)
                eigh()
                times["eigh"].append(timed(eigh, device)[0])
        agree_alg1, agree_exact, identical, gaps, margins, ambiguous = [], [], 0, [], [], 0
        with single_blas_thread():
            for (feats, _, _), out in zip(batches[1:], outputs[1:], strict=True):
                paper = set(out["alg1"].tolist())
                kept = set(out["saln"].positions.cpu().tolist())
                ref = exact_reference(feats, len(paper))
                overlap = len(paper & kept) / len(paper)
                agree_alg1.append(overlap)
                agree_exact.append(len(ref["kept"] & kept) / len(paper))
                gaps.append(ref["gap"])
                margins.append(ref["margin"])
                if ref["ambiguous"]:
                    ambiguous += 1
                elif overlap == 1.0:
                    identical += 1
        decided = rounds - ambiguous
        row = {
            "B": n,
            "d": d,
            "features": "signed" if signed else "relu",
            "rounds": rounds,
            "solver": "eigh"
            if selector.solver == "eigh"
            else ("lanczos: dense 3 eigenpairs" if dense_is_faster(n, d) else "lanczos"),
            "alg1_ms": summary(times["alg1"], 1e3),
            "saln_ms": summary(times["saln"], 1e3),
            "eigh_ms": summary(times["eigh"], 1e3) if times["eigh"] else None,
            "speedup": round_ratios(times["alg1"], times["saln"]),
            "agree_alg1_pct": {
                "mean": 100 * float(np.mean(agree_alg1)),
                "min": 100 * float(np.min(agree_alg1)),
            },
            "agree_exact_pct": {
                "mean": 100 * float(np.mean(agree_exact)),
                "min": 100 * float(np.min(agree_exact)),
            },
            "identical": identical,
            "non_degenerate": decided,
            "ambiguous": ambiguous,
            "fiedler_gap_min": float(np.min(gaps)),
            "fiedler_gap_median": float(np.median(gaps)),
            "topk_margin_min": float(np.min(margins)),
        }
        rows.append(row)
        log(
            f"  SALN B={n} d={d} {row['features']}: Alg.1 {row['alg1_ms']['median']:.1f} ms, "
            f"SALN {row['saln_ms']['median']:.1f} ms ({row['speedup']['median']:.1f}x), "
            f"identical {identical}/{decided}"
        )
    return rows


# -- 2. selector cost per candidate batch ------------------------------------------------------------
@dataclass
class SelectorVariant:
    label: str
    name: str
    overrides: list[str]
    sources: str = "none"  # none | reference | features_cached | features_backbone


SELECTOR_VARIANTS = [
    SelectorVariant("none", "none", []),
    SelectorVariant("uniform", "uniform", []),
    SelectorVariant("saln (pixels)", "saln", ["selector.features=pixels"]),
    SelectorVariant("saln (learner)", "saln", ["selector.features=learner"]),
    SelectorVariant(
        "saln (pretrained, cached)", "saln", ["selector.features=pretrained"], "features_cached"
    ),
    SelectorVariant(
        "saln (pretrained, no cache)", "saln", ["selector.features=pretrained"], "features_backbone"
    ),
    SelectorVariant("jest", "jest", [], "reference"),
    SelectorVariant("rho", "rho", [], "reference"),
    SelectorVariant("accuracy", "accuracy", []),
    SelectorVariant("accuracy_epoch", "accuracy_epoch", []),
    SelectorVariant("soft_accuracy", "soft_accuracy", []),
    SelectorVariant("hard_accuracy_topk", "hard_accuracy_topk", []),
    SelectorVariant("topk_loss", "topk_loss", []),
    SelectorVariant("topq_loss", "topq_loss", []),
    SelectorVariant("loss_weighted", "loss_weighted", []),
    SelectorVariant("loss_qsplit", "loss_qsplit", []),
]


def backbone_lookup(
    images: Tensor, backbone: str, size: int, device: torch.device
) -> Callable[[Tensor], Tensor]:
    """Pretrained features without the cache: the frozen backbone on every batch (random weights;
    the cost is the same), preprocessed as `saln_exp.features.extract` does."""
    net = build_backbone(backbone, None, False).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def lookup(index: Tensor) -> Tensor:
        x = images[index]
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != size:
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        return net((x - mean) / std).float()

    return lookup


def train_step_fn(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Callable[[], None]:
    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_selectors(
    st: Settings, device: torch.device, workdir: Path, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows = []
    n = st.selector_batch
    selector_cfgs = {
        v.label: compose_config([f"selector={v.name}", *v.overrides], workdir).selector
        for v in SELECTOR_VARIANTS
    }
    backbone_times: list[float] | None = None
    for model_name, like in st.selector_models:
        cfg = synthetic_cfg(workdir, model_name, like, n, 2 * n)
        seed_everything(cfg)
        data = build_data(cfg.dataset, cfg.paths, device)
        as_uint8(data)
        model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        ctx = RunContext(cfg, data, model, device, str(workdir / "cache"), str(workdir / "run"))
        pos = torch.arange(n, device=device)
        batch = Batch(
            data.train.indices[pos],
            data.pipeline(data.train.images[pos], train=True),
            data.train.targets[pos],
        )
        n_rows = len(data.noisy)
        g = torch.Generator().manual_seed(7)
        reference = (3 * torch.rand(n_rows, generator=g)).to(device)
        cached = FeatureStore(realistic_features(n_rows, 2048, False, seed=11).to(device))
        sources = {
            "none": ViewSources(),
            "reference": ViewSources(reference_losses=partial(by_batch_index, reference)),
            "features_cached": ViewSources(pretrained_features=cached),
        }
        selectors: dict[str, tuple[Selector, ViewSources]] = {}
        for variant in SELECTOR_VARIANTS:
            if variant.sources == "features_backbone" and backbone_times is not None:
                continue  # the backbone's cost does not depend on the learner: measured once
            selector = build_selector(selector_cfgs[variant.label], 0)
            if variant.sources == "none":
                view_sources = selector.prepare(ctx)  # nothing to build for these
            elif variant.sources == "features_backbone":
                lookup = backbone_lookup(data.train.images, st.backbone, st.backbone_size, device)
                view_sources = ViewSources(pretrained_features=lookup)
            else:  # precomputed: time the selection, not reference training or feature extraction
                view_sources = sources[variant.sources]
            if variant.name == "saln":
                selector.solver = auto_solver(device)
            selectors[variant.label] = (selector, view_sources)

        variants: dict[str, Callable[[], Any]] = {
            "__step__": train_step_fn(model, optimizer, batch.x, batch.y)
        }
        for label, (selector, view_sources) in selectors.items():
            if label.endswith("no cache)"):
                continue
            variants[label] = partial(select_once, selector, batch, model, view_sources)
        rounds = st.selector_rounds.get(model_name, 2)
        # warm up the step and one forward (they build the kernels every selector reuses)
        times = interleaved(variants, rounds, device, warmup=["__step__", "topk_loss"])
        if "saln (pretrained, no cache)" in selectors:
            selector, view_sources = selectors["saln (pretrained, no cache)"]
            once = partial(select_once, selector, batch, model, view_sources)
            backbone_times = interleaved({"b": once}, st.backbone_rounds, device, warmup=False)["b"]
        step_ms = summary(times["__step__"], 1e3)
        for variant in SELECTOR_VARIANTS:
            label = variant.label
            if label.endswith("no cache)"):
                samples = backbone_times or []
                kept = build_selector(selector_cfgs[label], 0).keep_count(n) / n
            else:
                samples = times[label]
                selector, view_sources = selectors[label]
                sel = select_once(selector, batch, model, view_sources)
                kept = len(sel.positions) / n
            select_ms = summary(samples, 1e3)
            fraction = select_ms["median"] / step_ms["median"]
            rows.append(
                {
                    "model": model_name,
                    "data": f"{like}-shaped",
                    "B": n,
                    "selector": label,
                    "select_ms": select_ms,
                    "step_ms": step_ms,
                    "fraction_of_step": fraction,
                    "kept_fraction": kept,
                    # step cost taken as proportional to batch size: selection pays when it costs
                    # less than the share of the step it removes
                    "pays_off": bool(fraction < 1.0 - kept) if kept < 1.0 else None,
                    "note": f"{st.backbone} at {st.backbone_size}px, measured once"
                    if label.endswith("no cache)")
                    else "",
                }
            )
        log(f"  selectors on {model_name}: step {step_ms['median']:.1f} ms")
    return rows


# -- 3. runner vs plain loop -------------------------------------------------------------------------
class PlainImages(Dataset):
    """What torchvision's MNIST / CIFAR datasets do per item: uint8 array -> PIL -> transform."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Callable):
        self.images = images  # N x H x W x C uint8
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = self.images[i]
        pil = Image.fromarray(img[..., 0], mode="L") if img.shape[-1] == 1 else Image.fromarray(img)
        return self.transform(pil), int(self.targets[i])


def plain_transform(mean: tuple[float, ...], std: tuple[float, ...], augment: bool) -> T.Compose:
    steps: list[Any] = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    if augment:
        steps.append(assist_cifar_per_sample())
    steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def plain_epoch(
    loader: DataLoader, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> int:
    model.train()
    seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen


def bench_runner(
    st: Settings, device: torch.device, workdir: Path, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows = []
    for case in st.runner_cases:
        cfg = synthetic_cfg(
            workdir,
            case.model,
            case.like,
            case.batch,
            case.images,
            "selector=none",
            "trainer.epochs=1000",
        )
        seed_everything(cfg)
        data = build_data(cfg.dataset, cfg.paths, device)
        as_uint8(data)
        mean = tuple(data.pipeline.mean.flatten().tolist())
        std = tuple(data.pipeline.std.flatten().tolist())
        if case.augment:  # what the cifar10 dataset config attaches: kornia, batched on the device
            data.pipeline = BatchPipeline(mean, std, assist_cifar_batched()).to(device)
        model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
        selector = build_selector(cfg.selector, int(cfg.seed))
        (workdir / "run").mkdir(parents=True, exist_ok=True)
        trainer = Trainer(cfg, data, model, selector, workdir / "run", device, tracking=None)
        trainer.sources = selector.prepare(trainer.ctx)

        def runner_epoch(trainer: Trainer = trainer) -> None:
            trainer.run_epoch()
            # end_epoch (evaluation) is not timed, so count the epoch here: a real run saves its
            # example batch (selection_example.pt) in the first epoch only
            trainer.progress.epoch = max(trainer.progress.epoch, 1)

        images = data.train.images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        targets = data.train.targets.cpu().numpy()
        dataset = PlainImages(images, targets, plain_transform(mean, std, case.augment))
        variants: dict[str, Callable[[], Any]] = {"runner": runner_epoch}
        loaders = []
        for workers in st.plain_workers:
            loader = DataLoader(
                dataset,
                batch_size=case.batch,
                shuffle=True,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=device.type == "cuda",
            )
            loaders.append(loader)
            plain_model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
            plain_opt = build_optimizer(cfg.optimizer, plain_model.parameters())
            variants[f"plain_w{workers}"] = lambda ld=loader, m=plain_model, o=plain_opt: (
                plain_epoch(ld, m, o, device)
            )
        times = interleaved(variants, case.rounds, device)
        del loaders, variants
        gc.collect()
        ips = {name: summary([case.images / t for t in ts]) for name, ts in times.items()}
        plain_names = [name for name in times if name.startswith("plain")]
        best = max(plain_names, key=lambda name: ips[name]["median"])
        row = {
            "case": case.label,
            "model": case.model,
            "data": f"{case.like}-shaped",
            "augment": case.augment,
            "batch": case.batch,
            "images": case.images,
            "rounds": case.rounds,
            "images_per_s": ips,
            "best_plain": best,
            # images/s ratio = epoch-time ratio, round by round
            "speedup_vs_best_plain": round_ratios(times[best], times["runner"]),
        }
        rows.append(row)
        log(
            f"  runner vs plain, {case.label}: runner {ips['runner']['median']:.0f} img/s, "
            f"{best} {ips[best]['median']:.0f} img/s ({row['speedup_vs_best_plain']['median']:.2f}x)"
        )
    return rows


# -- 4. peak memory ----------------------------------------------------------------------------------
MEASURE_CHILD = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(json.dumps({"returncode": proc.returncode, "wall_s": time.perf_counter() - start,
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "stderr_tail": proc.stderr[-1500:]}))
"""


def saln_train_command() -> list[str]:
    script = Path(sys.executable).parent / "saln-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "saln_exp.train"]


def bench_memory(st: Settings, workdir: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    cases = [
        (
            "offline default (digits, lenet)",
            ["logger=none", "trainer.progress=false", *st.memory_default_args],
        ),
        (
            "CIFAR-shaped synthetic, resnet18",
            ["logger=none", "trainer.progress=false", *st.memory_cifar_args],
        ),
    ]
    rows = []
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for i, (label, args) in enumerate(cases):
        out = workdir / f"memory{i}"
        command = [
            *saln_train_command(),
            *args,
            f"paths.log_dir={out}",
            f"paths.cache_dir={out}/cache",
        ]
        # a fresh parent per run: RUSAGE_CHILDREN's max RSS is the largest child it ever waited for
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE_CHILD, *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            result = {
                "returncode": proc.returncode,
                "wall_s": float("nan"),
                "max_rss_kb": 0,
                "stderr_tail": proc.stderr[-1500:],
            }
        rows.append(
            {
                "run": label,
                "command": "saln-train " + " ".join(args),
                "max_rss_mb": result["max_rss_kb"] / 1024,  # Linux reports kilobytes
                "wall_s": result["wall_s"],
                "returncode": result["returncode"],
                "error": result["stderr_tail"] if result["returncode"] else "",
            }
        )
        log(f"  peak memory, {label}: {rows[-1]['max_rss_mb']:.0f} MB in {result['wall_s']:.1f} s")
    return rows


# -- 5. selective backward ---------------------------------------------------------------------------
def current_path(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, k: int
) -> None:
    """What the runner does: an eval-mode inference forward to score, then a training step on the kept."""
    model.eval()
    with torch.inference_mode():
        losses = F.cross_entropy(model(x), y, reduction="none")
    keep = torch.topk(losses, k).indices
    model.train()
    loss = F.cross_entropy(model(x[keep]), y[keep])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def selective_path(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, k: int
) -> None:
    """One training-mode forward with autograd over the whole batch, then backward of the kept
    samples' loss only. (Batch norm then normalises with the whole batch's statistics.)"""
    model.train()
    losses = F.cross_entropy(model(x), y, reduction="none")
    keep = torch.topk(losses.detach(), k).indices
    loss = losses[keep].mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def bench_selective(
    st: Settings, device: torch.device, workdir: Path, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows = []
    for model_name, like, n in st.selective_cases:
        cfg = synthetic_cfg(workdir, model_name, like, n, n)
        seed_everything(cfg)
        data = build_data(cfg.dataset, cfg.paths, device)
        x = data.pipeline(data.train.images, train=True)
        y = data.train.targets
        model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        variants: dict[str, Callable[[], Any]] = {"full": train_step_fn(model, optimizer, x, y)}
        for f in st.selective_ratios:
            k = max(1, int(n * (1 - f) + 1e-9))
            variants[f"current_{f}"] = partial(current_path, model, optimizer, x, y, k)
            variants[f"selective_{f}"] = partial(selective_path, model, optimizer, x, y, k)
        rounds = st.selective_rounds.get(model_name, 2)
        times = interleaved(variants, rounds, device)
        for f in st.selective_ratios:
            current, selective = times[f"current_{f}"], times[f"selective_{f}"]
            ratio = round_ratios(selective, current)
            rows.append(
                {
                    "model": model_name,
                    "data": f"{like}-shaped",
                    "B": n,
                    "filter_ratio": f,
                    "kept": max(1, int(n * (1 - f) + 1e-9)),
                    "current_ms": summary(current, 1e3),
                    "selective_ms": summary(selective, 1e3),
                    "full_step_ms": summary(times["full"], 1e3),
                    "selective_over_current": ratio,
                    "cheaper": "selective backward"
                    if ratio["median"] < 1.0
                    else "current (second forward)",
                }
            )
            log(
                f"  selective backward, {model_name} f={f}: current {rows[-1]['current_ms']['median']:.1f} ms, "
                f"selective {rows[-1]['selective_ms']['median']:.1f} ms"
            )
    return rows


# -- machine, targets, report ------------------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf")
        else None,
    }
    with contextlib.suppress(OSError):
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _find(rows: list[dict], **match: Any) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def evaluate_targets(results: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    targets = []

    def add(name: str, required: str, measured: str | None, ok: bool | None) -> None:
        status = "n/a" if ok is None else ("PASS" if ok else "MISS")
        targets.append(
            {
                "target": name,
                "required": required,
                "measured": measured or "not measured",
                "status": status,
            }
        )

    saln = results.get("saln_vs_algorithm1") or []
    for n, need in ((1024, 6.0), (256, 2.0)):
        row = _find(saln, B=n, d=512, features="relu")
        speed = row["speedup"]["median"] if row else None
        add(
            f"SALN step vs Algorithm 1, B={n}, d=512",
            f">= {need:g}x faster",
            f"{speed:.1f}x" if row else None,
            None if row is None else speed >= need,
        )
    if saln:
        identical = sum(r["identical"] for r in saln)
        decided = sum(r["non_degenerate"] for r in saln)
        add(
            "SALN kept set = Algorithm 1's on non-degenerate batches",
            "100%",
            f"{identical}/{decided} batches ({100 * identical / max(decided, 1):.0f}%)",
            identical == decided,
        )
    else:
        add("SALN kept set = Algorithm 1's on non-degenerate batches", "100%", None, None)
    runner = results.get("runner_vs_plain") or []
    for label, need in (
        ("LeNet, MNIST-shaped", 1.5),
        ("ResNet-18, CIFAR-shaped", 1.0),
        ("ResNet-18, CIFAR-shaped + aug", 1.0),
    ):
        row = _find(runner, case=label)
        speed = row["speedup_vs_best_plain"]["median"] if row else None
        add(
            f"runner selector=none vs plain loop, {label}",
            f">= {need:g}x images/s",
            f"{speed:.2f}x" if row else None,
            None if row is None else speed >= need,
        )
    epochs = results.get("epoch_times") or []
    for family, need_min in (("FCNet100", 5.0), ("LeNet", 30.0)):
        rows = [r for r in epochs if r["case"].split(",")[0] == family]
        n = RECIPE_EPOCHS[family.rstrip("0123456789")]
        projected = [
            r["seconds"]["wall"]["first"] + (n - 1) * r["seconds"]["wall"]["later"] for r in rows
        ]
        worst = max(projected) / 60 if projected else None
        add(
            f"{family} row of the ASSIST recipe, {n} epochs (projected from epochs 2+)",
            f"<= about {need_min:g} min",
            f"{worst:.1f} min (slowest of {len(rows)} rows)" if rows else None,
            None if not rows else worst <= need_min * 1.1,
        )
    total = results.get("total_seconds")
    add(
        "saln-bench (default settings) completes",
        f"< {BUDGET_SECONDS / 60:.0f} min",
        f"{total / 60:.1f} min" + (" (quick run)" if quick else "") if total is not None else None,
        None if quick or total is None else total < BUDGET_SECONDS,
    )
    return targets


def _ms(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "-"
    digits = 2 if s["median"] < 10 else 1 if s["median"] < 1000 else 0
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}-{s['q3']:.{digits}f}]"


def _x(s: dict | None, digits: int = 1) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['median']:.{digits}f}x [{s['q1']:.{digits}f}-{s['q3']:.{digits}f}]"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def to_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# saln-bench results",
        "",
        f"Machine: {m['cpu']} ({m['arch']}), {m['cores_usable']} of {m['cores']} cores usable, "
        f"{m.get('memory_gb')} GiB; device {m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}; "
        f"torch {m['torch']} ({m['torch_threads']} threads), numpy {m['numpy']}, scipy {m['scipy']}, "
        f"Python {m['python']}.",
        f"Run: {results['created']}, {'quick' if results['quick'] else 'default'} settings, "
        f"{results['total_seconds']:.0f} s; load average {m.get('load_average_start')} at start, "
        f"{m.get('load_average_end')} at end.",
        "Times are medians of repeated runs with [first-third quartile]; ratios are taken round by "
        "round (both sides timed back to back) and summarised the same way.",
    ]
    if results.get("updated"):
        u = results["updated"]
        lines.append(
            f"Sections {', '.join(u['sections'])} re-run on {u['created']} on "
            f"{u['machine']['cpu']}, {u['machine']['cores']} cores, torch "
            f"{u['machine']['torch_threads']} thread(s) ({u['seconds']:.0f} s, "
            f"load average {u['machine'].get('load_average_start')} at start, "
            f"{u['machine'].get('load_average_end')} at end); the others are from the run above."
        )
    lines += [
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "required", "measured", "status"],
        [
            [t["target"], t["required"], t["measured"], f"**{t['status']}**"]
            for t in results["targets"]
        ],
    )

    saln = results.get("saln_vs_algorithm1")
    if saln:
        lines += [
            "",
            "## 1. SALN selection step vs the paper's Algorithm 1",
            "",
            "`SALN.select` on cached features (normalise, solve, top-k) vs `saln_algorithm1` as printed "
            "(sklearn cosine_similarity, np.diag, np.linalg.eigh) on the same float32 features; "
            "filter ratio 0.8; a new seeded batch every round; each timed call follows an untimed call of the same method (steady state: threads awake, caches warm), methods alternate. *same kept set*: batches where SALN keeps "
            "exactly Algorithm 1's set, out of those with a unique answer (Fiedler gap > 0, no tie at the "
            "top-k cut). *overlap vs exact*: against a float64 dense solve.",
            "",
        ]
        lines += _table(
            [
                "B",
                "d",
                "features",
                "Alg. 1 ms",
                "SALN ms",
                "eigh ms",
                "speedup",
                "same kept set",
                "overlap % (min)",
                "overlap vs exact %",
                "Fiedler gap (min)",
                "solver",
            ],
            [
                [
                    r["B"],
                    r["d"],
                    r["features"],
                    _ms(r["alg1_ms"]),
                    _ms(r["saln_ms"]),
                    _ms(r["eigh_ms"]),
                    _x(r["speedup"]),
                    f"{r['identical']}/{r['non_degenerate']}",
                    f"{r['agree_alg1_pct']['min']:.1f}",
                    f"{r['agree_exact_pct']['min']:.1f}",
                    f"{r['fiedler_gap_min']:.3g}",
                    r["solver"],
                ]
                for r in saln
            ],
        )

    sel = results.get("selector_overhead")
    if sel:
        lines += [
            "",
            "## 2. Selection cost per candidate batch, as a fraction of a training step",
            "",
            "`selector.select(batch, BatchView(...))` including the view's inference forward, vs one "
            "training step (forward, backward, SGD step) on the whole batch. JEST and RHO read "
            "precomputed reference losses. *pays off*: select/step < 1 - kept (step cost taken as "
            "proportional to batch size).",
            "",
        ]
        lines += _table(
            [
                "model",
                "data",
                "B",
                "step ms",
                "selector",
                "select ms",
                "select / step",
                "kept",
                "pays off",
                "note",
            ],
            [
                [
                    r["model"],
                    r["data"],
                    r["B"],
                    _ms(r["step_ms"]),
                    r["selector"],
                    _ms(r["select_ms"]),
                    f"{r['fraction_of_step']:.3f}",
                    f"{r['kept_fraction']:.2f}",
                    "-" if r["pays_off"] is None else ("yes" if r["pays_off"] else "no"),
                    r["note"],
                ]
                for r in sel
            ],
        )

    runner = results.get("runner_vs_plain")
    if runner:
        workers = sorted({k for r in runner for k in r["images_per_s"] if k.startswith("plain")})
        lines += [
            "",
            "## 3. Runner (`Trainer.run_epoch`, selector=none) vs a plain PyTorch loop",
            "",
            "Training images per second, evaluation excluded, warm-up epoch excluded. Plain loop: "
            "torchvision-style Dataset (uint8 -> PIL -> ToImage/ToDtype [+ per-sample ASSIST augmentation] "
            "-> Normalize), DataLoader with `plain_wN` = N workers (persistent), same model, optimizer "
            "and batch size. Runner: data on the device, augmentation batched with kornia.",
            "",
        ]
        lines += _table(
            [
                "case",
                "batch",
                "images",
                "runner img/s",
                *[f"{w} img/s" for w in workers],
                "runner / best plain",
            ],
            [
                [
                    r["case"],
                    r["batch"],
                    r["images"],
                    _ms(r["images_per_s"]["runner"]),
                    *[_ms(r["images_per_s"].get(w)) for w in workers],
                    _x(r["speedup_vs_best_plain"], 2),
                ]
                for r in runner
            ],
        )

    mem = results.get("peak_memory")
    if mem:
        lines += ["", "## 4. Peak memory (max RSS of the `saln-train` process)", ""]
        lines += _table(
            ["run", "command", "max RSS MB", "wall s", "exit"],
            [
                [
                    r["run"],
                    f"`{r['command']}`",
                    f"{r['max_rss_mb']:.0f}",
                    f"{r['wall_s']:.1f}",
                    r["returncode"],
                ]
                for r in mem
            ],
        )

    sb = results.get("selective_backward")
    if sb:
        lines += [
            "",
            "## 5. Second forward vs selective backward (loss-based selection, top-k loss)",
            "",
            "*current*: eval-mode inference forward of the candidate batch, then forward + backward + step "
            "on the kept samples. *selective*: one training-mode forward with autograd over the whole "
            "batch, backward of the kept samples' loss only, step. *full*: a plain step on the whole batch.",
            "",
        ]
        lines += _table(
            [
                "model",
                "B",
                "filter ratio",
                "kept",
                "current ms",
                "selective ms",
                "full step ms",
                "selective / current",
                "cheaper",
            ],
            [
                [
                    r["model"],
                    r["B"],
                    r["filter_ratio"],
                    r["kept"],
                    _ms(r["current_ms"]),
                    _ms(r["selective_ms"]),
                    _ms(r["full_step_ms"]),
                    _x(r["selective_over_current"], 2),
                    r["cheaper"],
                ]
                for r in sb
            ],
        )
    epochs = results.get("epoch_times")
    if epochs:
        lines += ["", "## 6. Epoch time of the ASSIST MNIST recipes (real MNIST)", ""]
        lines += epochs_markdown(epochs)
    errors = results.get("errors") or {}
    if errors:
        lines += ["", "## Errors", ""] + [f"- {name}: `{msg}`" for name, msg in errors.items()]
    return "\n".join(lines) + "\n"


SECTIONS = ("saln", "selectors", "runner", "memory", "selective", "epochs")


@contextlib.contextmanager
def quiet(logger: str):
    """Silence one logger's warnings for a while: the signed-feature case trips SALN's (correct)
    "indefinite Laplacian" warning, which is no news in a benchmark."""
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def run(
    settings: Settings,
    out_dir: Path,
    quick: bool,
    sections: tuple[str, ...] = SECTIONS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the chosen sections, write results.json and results.md to `out_dir`, return the results."""
    start = time.perf_counter()
    device = resolve_device("auto")
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": quick,
        "sections": list(sections),
        "settings": asdict(settings),
        "machine": machine_info(device),
        "errors": {},
    }
    log(
        f"saln-bench on {results['machine']['cpu']}, {results['machine']['cores']} cores, device {device}"
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="saln-bench-") as tmp, quiet("saln_exp.selectors.saln"):
        workdir = Path(tmp)
        steps: list[tuple[str, str, Callable[[], Any]]] = [
            ("saln", "saln_vs_algorithm1", lambda: bench_saln(settings, device, log)),
            (
                "selectors",
                "selector_overhead",
                lambda: bench_selectors(settings, device, workdir, log),
            ),
            ("runner", "runner_vs_plain", lambda: bench_runner(settings, device, workdir, log)),
            ("memory", "peak_memory", lambda: bench_memory(settings, workdir, log)),
            (
                "selective",
                "selective_backward",
                lambda: bench_selective(settings, device, workdir, log),
            ),
            ("epochs", "epoch_times", lambda: bench_epochs(settings, workdir, log)),
        ]
        for section, key, fn in steps:
            if section not in sections:
                continue
            log(f"[{section}]")
            t0 = time.perf_counter()
            try:
                results[key] = fn()
            except Exception as err:  # one broken section must not hide the others' numbers
                results[key] = []
                results["errors"][section] = f"{type(err).__name__}: {err}"
                log(f"  {section} failed: {type(err).__name__}: {err}")
            results.setdefault("section_seconds", {})[section] = time.perf_counter() - t0
    with contextlib.suppress(OSError):
        results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["total_seconds"] = time.perf_counter() - start
    results = merged_with_earlier(results, out_dir / "results.json", sections)
    results["targets"] = evaluate_targets(results, quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    markdown = to_markdown(results)
    (out_dir / "results.md").write_text(markdown)
    return results


SECTION_KEYS = {
    "saln": "saln_vs_algorithm1",
    "selectors": "selector_overhead",
    "runner": "runner_vs_plain",
    "memory": "peak_memory",
    "selective": "selective_backward",
    "epochs": "epoch_times",
}


def merged_with_earlier(
    results: dict[str, Any], earlier_path: Path, sections: tuple[str, ...]
) -> dict[str, Any]:
    """`--only` re-runs some sections: keep the other sections' numbers from the earlier
    results.json of the same settings, and say in the header which sections are new."""
    if set(sections) == set(SECTIONS) or not earlier_path.exists():
        return results
    try:
        earlier = json.loads(earlier_path.read_text())
    except (OSError, ValueError):
        return results
    if earlier.get("schema") != SCHEMA_VERSION or earlier.get("quick") != results["quick"]:
        return results
    merged = dict(earlier)
    for section in sections:
        merged[SECTION_KEYS[section]] = results.get(SECTION_KEYS[section], [])
        if section in results["errors"]:
            merged.setdefault("errors", {})[section] = results["errors"][section]
        else:
            merged.get("errors", {}).pop(section, None)
    merged["updated"] = {
        "sections": list(sections),
        "created": results["created"],
        "seconds": results["total_seconds"],
        "machine": results["machine"],
    }
    merged["sections"] = sorted(set(earlier.get("sections", [])) | set(sections))
    return merged


def _jsonable(value: Any) -> Any:
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saln-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run of every section"
    )
    parser.add_argument(
        "--out", default=str(PROJECT_ROOT / "bench"), help="where results.json / results.md go"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    settings = quick_settings() if args.quick else Settings()
    results = run(settings, Path(args.out), args.quick, sections)
    print()
    print(to_markdown(results))
    print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
