"""Section 3: the runner (`Trainer.train_epoch`, selector=none) against a plain PyTorch loop.

The plain loop is what a user would write: a torchvision-style Dataset (uint8 -> PIL -> per-sample
transforms), a DataLoader with workers, the same model, optimizer and batch size. The runner keeps
the data on the device and augments whole batches there."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from bench.inputs import data_and_model, synthetic_config
from bench.settings import Log, RunnerCase, Settings
from bench.tables import ms, ratio, table
from bench.timing import interleaved, round_ratios, summary
from saln_exp.data.augment import assist_cifar_batched, assist_cifar_per_sample
from saln_exp.data.base import BatchPipeline, DataBundle
from saln_exp.models import build_model
from saln_exp.optim import build_optimizer
from saln_exp.selectors import build_selector
from saln_exp.trainer import Trainer

KEY = "runner_vs_plain"


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


def runner_epoch_fn(cfg, data: DataBundle, model: nn.Module, device: torch.device) -> Callable:
    """One training epoch of the runner, evaluation excluded."""
    selector = build_selector(cfg.selector, int(cfg.seed))
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, data, model, selector, run_dir, device, tracking=None)
    return trainer.train_epoch  # a real run's epochs, without their (untimed) evaluation


def plain_epoch_fns(
    st: Settings, case: RunnerCase, cfg, data: DataBundle, mean, std, device
) -> dict[str, Callable]:
    """The plain loop with each number of DataLoader workers, each with its own model."""
    images = data.train.images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    targets = data.train.targets.cpu().numpy()
    dataset = PlainImages(images, targets, plain_transform(mean, std, case.augment))
    variants = {}
    for workers in st.plain_workers:
        loader = DataLoader(
            dataset,
            batch_size=case.batch,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )
        model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        variants[f"plain_w{workers}"] = lambda ld=loader, m=model, o=optimizer: plain_epoch(
            ld, m, o, device
        )
    return variants


def measure(st: Settings, device: torch.device, workdir: Path, log: Log) -> list[dict[str, Any]]:
    rows = []
    for case in st.runner_cases:
        cfg = synthetic_config(
            workdir,
            case.model,
            case.like,
            case.batch,
            case.images,
            "selector=none",
            "trainer.epochs=1000",
        )
        data, model = data_and_model(cfg, device)
        mean = tuple(data.pipeline.mean.flatten().tolist())
        std = tuple(data.pipeline.std.flatten().tolist())
        if case.augment:  # what the cifar10 dataset config attaches: kornia, batched on the device
            data.pipeline = BatchPipeline(mean, std, assist_cifar_batched()).to(device)
        variants = {"runner": runner_epoch_fn(cfg, data, model, device)}
        variants |= plain_epoch_fns(st, case, cfg, data, mean, std, device)
        times = interleaved(variants, case.rounds, device)
        del variants  # stops the persistent DataLoader workers
        gc.collect()
        rows.append(runner_row(case, times))
        r = rows[-1]
        best = r["best_plain"]
        log(
            f"  runner vs plain, {case.label}: runner {r['images_per_s']['runner']['median']:.0f} "
            f"img/s, {best} {r['images_per_s'][best]['median']:.0f} img/s "
            f"({r['speedup_vs_best_plain']['median']:.2f}x)"
        )
    return rows


def runner_row(case: RunnerCase, times: dict[str, list[float]]) -> dict[str, Any]:
    ips = {name: summary([case.images / t for t in ts]) for name, ts in times.items()}
    plain_names = [name for name in times if name.startswith("plain")]
    best = max(plain_names, key=lambda name: ips[name]["median"])
    return {
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


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    workers = sorted({k for r in rows for k in r["images_per_s"] if k.startswith("plain")})
    lines = [
        "",
        "## 3. Runner (`Trainer.train_epoch`, selector=none) vs a plain PyTorch loop",
        "",
        "Training images per second, evaluation excluded, warm-up epoch excluded. Plain loop: "
        "torchvision-style Dataset (uint8 -> PIL -> ToImage/ToDtype [+ per-sample ASSIST augmentation] "
        "-> Normalize), DataLoader with `plain_wN` = N workers (persistent), same model, optimizer "
        "and batch size. Runner: data on the device, augmentation batched with kornia.",
        "",
    ]
    header = [
        "case",
        "batch",
        "images",
        "runner img/s",
        *[f"{w} img/s" for w in workers],
        "runner / best plain",
    ]
    cells = [
        [
            r["case"],
            r["batch"],
            r["images"],
            ms(r["images_per_s"]["runner"]),
            *[ms(r["images_per_s"].get(w)) for w in workers],
            ratio(r["speedup_vs_best_plain"], 2),
        ]
        for r in rows
    ]
    return lines + table(header, cells)
