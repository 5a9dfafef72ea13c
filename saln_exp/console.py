"""The table printed at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from saln_exp import rundir


def print_run_summary(summary: dict[str, Any], run_dir: Path) -> None:
    table = Table(
        title=f"{summary['dataset']} / {summary['model']} / {summary['selector']} (seed {summary['seed']})"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("final test acc", summary["final_test_acc"]),
        ("best test acc", f"{summary['best_test_acc']:.4f} (epoch {summary['best_epoch']})"),
        ("final train acc", summary["final_train_acc"]),
        ("final val acc", summary.get("final_val_acc")),
        ("training time (train+select) s", summary["train_time_s"]),
        ("total wall time s", summary["total_time_s"]),
        ("samples back-propagated", summary["samples_backprop"]),
        ("optimizer steps", summary["optim_steps"]),
        (f"time to test acc {summary['target_acc']} s", summary.get("time_to_target_s")),
    ]
    for name, value in rows:
        if value is None:
            continue
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console = Console(stderr=False)
    console.print(table)
    console.print(f"results: {run_dir}  ({rundir.METRICS}, {rundir.SUMMARY}, {rundir.CONFIG})")
