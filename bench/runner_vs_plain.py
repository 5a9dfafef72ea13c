"""Section 3: the runner (`Trainer.train_epoch`, selector=none) against the bare loop (the limit)
and a plain PyTorch loop; its evaluation against a bare inference loop.

The bare loops (bench/bare.py) index in-memory tensors: nothing left to remove. The plain loop is
what a user would write: a torchvision-style Dataset (uint8 -> PIL -> per-sample transforms), a
DataLoader with workers, the same model, optimizer and batch size. The runner keeps the data on
the device and augments whole batches there. Evaluation: `evaluate_split` (what every epoch's
metrics run) on the training split against a bare inference pass of the same model."""

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

from bench import bare
from bench.inputs import data_and_model, synthetic_config
from bench.settings import Log, RunnerCase, Settings
from bench.tables import ms, ratio, table
from bench.timing import interleaved, round_ratios, summary
from saln_exp.config import loop_settings
from saln_exp.data.augment import assist_cifar_batched, assist_cifar_per_sample
from saln_exp.data.base import BatchPipeline, DataBundle
from saln_exp.metrics import evaluate_split
from saln_exp.models import build_model
from saln_exp.optim import build_optimizer
from saln_exp.train import build_selector
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
    selector = build_selector(cfg, int(cfg.seed), device)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(loop_settings(cfg), data, model, selector, run_dir, device, tracking=None)
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


def bare_epoch_fn(cfg, data: DataBundle, device: torch.device, augment: bool) -> Callable:
    """The bare training loop on its own copy of the model (seeded alike)."""
    model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    batch_of, targets = bare.rows(data, data.train, augment)
    return lambda: bare.train_epoch(
        model, optimizer, batch_of, targets, int(cfg.dataset.batch_size)
    )


def eval_fns(cfg, data: DataBundle, model: nn.Module) -> dict[str, Callable]:
    """The runner's evaluation of the training split and a bare inference pass, same model."""
    size = int(cfg.eval.batch_size)
    batch_of, targets = bare.rows(data, data.train)
    return {
        "runner": lambda: evaluate_split(model, data.train, data.pipeline, "train", size),
        "bare": lambda: bare.inference(model, batch_of, targets, size),
    }


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
        variants["bare"] = bare_epoch_fn(cfg, data, device, case.augment)
        variants |= plain_epoch_fns(st, case, cfg, data, mean, std, device)
        times = interleaved(variants, case.rounds, device)
        del variants  # stops the persistent DataLoader workers
        gc.collect()
        evaluation = interleaved(eval_fns(cfg, data, model), case.rounds, device)
        rows.append(runner_row(case, times, evaluation))
        r = rows[-1]
        log(
            f"  runner vs loops, {case.label}: runner {r['images_per_s']['runner']['median']:.0f} "
            f"img/s, bare {r['images_per_s']['bare']['median']:.0f} img/s "
            f"({r['speedup_vs_bare']['median']:.2f}x), {r['best_plain']} "
            f"{r['images_per_s'][r['best_plain']]['median']:.0f} img/s; evaluation "
            f"{r['eval_vs_bare']['median']:.2f}x the bare inference loop"
        )
    return rows


def runner_row(
    case: RunnerCase, times: dict[str, list[float]], evaluation: dict[str, list[float]]
) -> dict[str, Any]:
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
        "speedup_vs_bare": round_ratios(times["bare"], times["runner"]),
        "speedup_vs_best_plain": round_ratios(times[best], times["runner"]),
        "eval_images_per_s": {
            name: summary([case.images / t for t in ts]) for name, ts in evaluation.items()
        },
        "eval_vs_bare": round_ratios(evaluation["bare"], evaluation["runner"]),
    }


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    workers = sorted({k for r in rows for k in r["images_per_s"] if k.startswith("plain")})
    lines = [
        "",
        "## 3. Runner (selector=none) vs the bare loop and a plain PyTorch loop",
        "",
        "Training images per second (`Trainer.train_epoch`, evaluation excluded, warm-up epoch "
        "excluded) and evaluation images per second (`evaluate_split` of the training split). "
        "*bare*: in-memory normalised tensors, a random permutation, one step per slice "
        "(with augmentation, the same batched kornia augmentation per slice); for evaluation, "
        "the same tensors in order under inference_mode (bench/bare.py): the limit. *plain_wN*: "
        "torchvision-style Dataset (uint8 -> PIL -> ToImage/ToDtype [+ per-sample ASSIST "
        "augmentation] -> Normalize), DataLoader with N workers (persistent), same model, "
        "optimizer and batch size. Ratios are the runner's images/s over the other's, round by "
        "round.",
        "",
    ]
    header = [
        "case",
        "batch",
        "images",
        "runner img/s",
        "bare img/s",
        *[f"{w} img/s" for w in workers],
        "runner / bare",
        "runner / best plain",
        "eval: runner img/s",
        "eval: bare img/s",
        "eval: runner / bare",
    ]
    cells = [
        [
            r["case"],
            r["batch"],
            r["images"],
            ms(r["images_per_s"]["runner"]),
            ms(r["images_per_s"].get("bare")),
            *[ms(r["images_per_s"].get(w)) for w in workers],
            ratio(r.get("speedup_vs_bare"), 2),
            ratio(r["speedup_vs_best_plain"], 2),
            ms(r.get("eval_images_per_s", {}).get("runner")),
            ms(r.get("eval_images_per_s", {}).get("bare")),
            ratio(r.get("eval_vs_bare"), 2),
        ]
        for r in rows
    ]
    return lines + table(header, cells)
