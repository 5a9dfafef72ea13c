"""Wall-clock timing on a noisy machine: paired, interleaved rounds and robust summaries."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA calls return before the work is done
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds one call of `fn` takes, and what it returned."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def summary(samples: list[float], scale: float = 1.0) -> dict[str, float]:
    """Median and spread (quartiles, min, max) of repeated measurements."""
    a = np.asarray(samples, dtype=float) * scale
    if a.size == 0:
        nan = float("nan")
        return {"median": nan, "q1": nan, "q3": nan, "min": nan, "max": nan, "n": 0}
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
    """Summary of the per-round ratios (both sides of each ratio were timed back to back)."""
    return summary([a / b for a, b in zip(numerator, denominator, strict=True) if b > 0])
