"""Section 5: second forward vs selective backward, for loss-based selection (top-k loss).

*current* is what the runner does: an eval-mode inference forward to score the candidate batch,
then a training step on the kept samples. *selective*: one training-mode forward with autograd
over the whole batch, then backward of the kept samples' loss only. Both keep the number of
samples the topk_loss selector keeps."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.inputs import data_and_model, synthetic_config, train_step_fn
from bench.settings import Log, Settings
from bench.tables import ms, ratio, table
from bench.timing import interleaved, round_ratios, summary
from saln_exp.optim import build_optimizer
from saln_exp.selectors import SELECTORS

KEY = "selective_backward"


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


def kept_count(n: int, filter_ratio: float) -> int:
    """How many of n samples the topk_loss selector keeps at this filter ratio."""
    return SELECTORS["topk_loss"](filter_ratio=filter_ratio).keep_count(n)


def measure(st: Settings, device: torch.device, workdir: Path, log: Log) -> list[dict[str, Any]]:
    rows = []
    for model_name, like, n in st.selective_cases:
        cfg = synthetic_config(workdir, model_name, like, n, n)
        data, model = data_and_model(cfg, device, uint8=False)
        x = data.pipeline(data.train.images, train=True)
        y = data.train.targets
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        variants: dict[str, Callable[[], Any]] = {"full": train_step_fn(model, optimizer, x, y)}
        for f in st.selective_ratios:
            k = kept_count(n, f)
            variants[f"current_{f}"] = partial(current_path, model, optimizer, x, y, k)
            variants[f"selective_{f}"] = partial(selective_path, model, optimizer, x, y, k)
        times = interleaved(variants, st.selective_rounds.get(model_name, 2), device)
        for f in st.selective_ratios:
            current, selective = times[f"current_{f}"], times[f"selective_{f}"]
            speed = round_ratios(selective, current)
            rows.append(
                {
                    "model": model_name,
                    "data": f"{like}-shaped",
                    "B": n,
                    "filter_ratio": f,
                    "kept": kept_count(n, f),
                    "current_ms": summary(current, 1e3),
                    "selective_ms": summary(selective, 1e3),
                    "full_step_ms": summary(times["full"], 1e3),
                    "selective_over_current": speed,
                    "cheaper": "selective backward"
                    if speed["median"] < 1.0
                    else "current (second forward)",
                }
            )
            log(
                f"  selective backward, {model_name} f={f}: current "
                f"{rows[-1]['current_ms']['median']:.1f} ms, "
                f"selective {rows[-1]['selective_ms']['median']:.1f} ms"
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## 5. Second forward vs selective backward (loss-based selection, top-k loss)",
        "",
        "*current*: eval-mode inference forward of the candidate batch, then forward + backward + step "
        "on the kept samples. *selective*: one training-mode forward with autograd over the whole "
        "batch, backward of the kept samples' loss only, step. *full*: a plain step on the whole batch.",
        "",
    ]
    header = [
        "model",
        "B",
        "filter ratio",
        "kept",
        "current ms",
        "selective ms",
        "full step ms",
        "selective / current",
        "cheaper",
    ]
    cells = [
        [
            r["model"],
            r["B"],
            r["filter_ratio"],
            r["kept"],
            ms(r["current_ms"]),
            ms(r["selective_ms"]),
            ms(r["full_step_ms"]),
            ratio(r["selective_over_current"], 2),
            r["cheaper"],
        ]
        for r in rows
    ]
    return lines + table(header, cells)
