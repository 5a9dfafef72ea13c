"""The targets the benchmark checks: PASS / MISS for each, from the sections' results."""

from __future__ import annotations

from typing import Any

from bench import startup
from bench.settings import RECIPE_EPOCHS

BUDGET_SECONDS = 600.0  # `make bench` must finish in 10 minutes on a 2-core CPU


def _find(rows: list[dict], **match: Any) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


class Targets:
    """Rows of the results.md targets table, added one check at a time."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, required: str, measured: str | None, ok: bool | None) -> None:
        status = "n/a" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append(
            {
                "target": name,
                "required": required,
                "measured": measured or "not measured",
                "status": status,
            }
        )


def saln_targets(targets: Targets, saln: list[dict]) -> None:
    for n, need in ((1024, 6.0), (256, 2.0)):
        row = _find(saln, B=n, d=512, features="relu")
        speed = row["speedup"]["median"] if row else None
        targets.add(
            f"SALN step vs Algorithm 1, B={n}, d=512",
            f">= {need:g}x faster",
            f"{speed:.1f}x" if row else None,
            None if row is None else speed >= need,
        )
    name = "SALN kept set = Algorithm 1's on non-degenerate batches"
    if not saln:
        targets.add(name, "100%", None, None)
        return
    identical = sum(r["identical"] for r in saln)
    decided = sum(r["non_degenerate"] for r in saln)
    targets.add(
        name,
        "100%",
        f"{identical}/{decided} batches ({100 * identical / max(decided, 1):.0f}%)",
        identical == decided,
    )


def runner_targets(targets: Targets, runner: list[dict]) -> None:
    for label, need in (
        ("LeNet, MNIST-shaped", 1.5),
        ("ResNet-18, CIFAR-shaped", 1.0),
        ("ResNet-18, CIFAR-shaped + aug", 1.0),
    ):
        row = _find(runner, case=label)
        speed = row["speedup_vs_best_plain"]["median"] if row else None
        targets.add(
            f"runner selector=none vs plain loop, {label}",
            f">= {need:g}x images/s",
            f"{speed:.2f}x" if row else None,
            None if row is None else speed >= need,
        )


def recipe_targets(targets: Targets, epochs: list[dict]) -> None:
    """A whole ASSIST recipe row, projected from the measured epochs, within its time budget."""
    for family, need_min in (("FCNet100", 5.0), ("LeNet", 30.0)):
        rows = [r for r in epochs if r["case"].split(",")[0] == family]
        n = RECIPE_EPOCHS[family.rstrip("0123456789")]
        projected = [
            r["seconds"]["wall"]["first"] + (n - 1) * r["seconds"]["wall"]["later"] for r in rows
        ]
        worst = max(projected) / 60 if projected else None
        targets.add(
            f"{family} row of the ASSIST recipe, {n} epochs (projected from epochs 2+)",
            f"<= about {need_min:g} min",
            f"{worst:.1f} min (slowest of {len(rows)} rows)" if rows else None,
            None if not rows else worst <= need_min * 1.1,
        )


def evaluate_targets(results: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    targets = Targets()
    saln_targets(targets, results.get("saln_vs_algorithm1") or [])
    runner_targets(targets, results.get("runner_vs_plain") or [])
    recipe_targets(targets, results.get("epoch_times") or [])
    startup.add_targets(targets, results.get(startup.KEY) or [])
    total = results.get("total_seconds")
    targets.add(
        "saln-bench (default settings) completes",
        f"< {BUDGET_SECONDS / 60:.0f} min",
        f"{total / 60:.1f} min" + (" (quick run)" if quick else "") if total is not None else None,
        None if quick or total is None else total < BUDGET_SECONDS,
    )
    return targets.rows
