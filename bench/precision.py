"""Section 8: bf16 autocast and channels_last on a ResNet-18 training step.

A step is what the trainer's `train_step` does: the forward under `trainer.precision`'s autocast
(the trainer's own `autocast_factory`), the cross-entropy in float32, backward, SGD step; with
`trainer.channels_last` both the model and the batch are channels-last, as `saln-train` makes them.
Each variant trains its own copy of one initialisation on one CIFAR-shaped batch. These are GPU
settings; the section runs on any device so that its numbers exist wherever `make bench` runs,
with the device named, and on a CPU the bf16 instructions it has (without AMX or AVX-512 BF16,
bf16 is emulated, not accelerated)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.inputs import data_and_model, synthetic_config
from bench.machine import cpu_bf16_units
from bench.settings import Log, Settings
from bench.tables import ms, ratio, table
from bench.timing import interleaved, round_ratios, summary
from saln_exp.optim import build_optimizer
from saln_exp.trainer import autocast_factory

KEY = "precision"
VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def label(precision: str, channels_last: bool) -> str:
    return precision + (" + channels_last" if channels_last else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu (bf16 instructions: {', '.join(cpu_bf16_units()) or 'none'})"


def step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
            autocast: Callable) -> Callable[[], None]:  # fmt: skip
    def step() -> None:
        model.train()
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def first_loss(model: nn.Module, x: Tensor, y: Tensor, autocast: Callable) -> float:
    """The loss before any step: how far a variant's forward is from fp32's on the same weights."""
    model.train()  # batch statistics, as in the step; no gradient, nothing updated but BN's stats
    with torch.no_grad(), autocast():
        return float(F.cross_entropy(model(x).float(), y))


def measure(st: Settings, device: torch.device, workdir: Path, log: Log) -> list[dict[str, Any]]:
    cfg = synthetic_config(workdir, st.precision_model, "cifar10", st.precision_batch,
                           st.precision_batch)  # fmt: skip
    data, init = data_and_model(cfg, device, uint8=False)
    x, y = data.pipeline(data.train.images, train=True), data.train.targets
    steps, losses = {}, {}
    for precision, channels_last in VARIANTS:
        model = copy.deepcopy(init)
        batch = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            batch = x.contiguous(memory_format=torch.channels_last)
        autocast = autocast_factory(device, precision)
        name = label(precision, channels_last)
        losses[name] = first_loss(copy.deepcopy(model), batch, y, autocast)
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        steps[name] = step_fn(model, optimizer, batch, y, autocast)
    times = interleaved(steps, st.precision_rounds, device)
    base = label("fp32", False)
    rows = []
    for name, samples in times.items():
        rows.append(
            {
                "model": st.precision_model,
                "B": st.precision_batch,
                "variant": name,
                "device": device_name(device),
                "step_ms": summary(samples, 1e3),
                "speedup_vs_fp32": round_ratios(times[base], samples),
                "first_loss": losses[name],
                "first_loss_rel_diff": abs(losses[name] - losses[base]) / abs(losses[base]),
            }
        )
        log(f"  {st.precision_model} B={st.precision_batch} {name}: "
            f"{rows[-1]['step_ms']['median']:.1f} ms per step")  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## 8. bf16 autocast and channels_last (a training step)",
        "",
        "One training step (forward under the trainer's autocast, float32 loss, backward, SGD step) "
        "on one CIFAR-shaped batch; *speedup* is fp32's step time over the variant's, round by "
        "round; *first loss* is the loss of the same initial weights, and its relative difference "
        "to fp32 says the variant computes the same thing. These are GPU settings; on a CPU "
        "without AMX or AVX-512 BF16 instructions bf16 is emulated, not accelerated.",
        "",
        f"Device: {rows[0]['device']}.",
        "",
    ]
    header = ["model", "B", "variant", "step ms", "speedup vs fp32", "first loss", "rel. diff"]
    cells = [
        [
            r["model"],
            r["B"],
            r["variant"],
            ms(r["step_ms"]),
            ratio(r["speedup_vs_fp32"], 2),
            f"{r['first_loss']:.4f}",
            f"{r['first_loss_rel_diff']:.1e}",
        ]
        for r in rows
    ]
    return lines + table(header, cells)
