"""Section 4: peak memory (max RSS) of real `saln-train` runs, each in its own subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from bench.settings import Log, Settings
from bench.tables import table

KEY = "peak_memory"

# Runs the command and reports its max RSS. A fresh parent per run, because RUSAGE_CHILDREN's
# max RSS is the largest child the parent ever waited for.
MEASURE_CHILD = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(json.dumps({"returncode": proc.returncode, "wall_s": time.perf_counter() - start,
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "stderr_tail": proc.stderr[-1500:]}))
"""


def saln_train_command() -> list[str]:
    """The installed `saln-train` next to this Python, or the module when it is not installed."""
    script = Path(sys.executable).parent / "saln-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "saln_exp.train"]


def measured_run(args: list[str], out: Path) -> dict[str, Any]:
    """`saln-train <args>` with its logs and caches under `out`: exit code, wall time, max RSS."""
    command = [*saln_train_command(), *args, f"paths.log_dir={out}", f"paths.cache_dir={out}/cache"]
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE_CHILD, *command],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
        timeout=900,
    )
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):  # the measuring parent itself failed
        return {
            "returncode": proc.returncode,
            "wall_s": float("nan"),
            "max_rss_kb": 0,
            "stderr_tail": proc.stderr[-1500:],
        }


def measure(st: Settings, device: torch.device, workdir: Path, log: Log) -> list[dict[str, Any]]:
    quiet = ["logger=none", "trainer.progress=false"]
    cases = [
        ("offline default (digits, lenet)", [*quiet, *st.memory_default_args]),
        ("CIFAR-shaped synthetic, resnet18", [*quiet, *st.memory_cifar_args]),
    ]
    rows = []
    for i, (label, args) in enumerate(cases):
        result = measured_run(args, workdir / f"memory{i}")
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


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## 4. Peak memory (max RSS of the `saln-train` process)", ""]
    cells = [
        [
            r["run"],
            f"`{r['command']}`",
            f"{r['max_rss_mb']:.0f}",
            f"{r['wall_s']:.1f}",
            r["returncode"],
        ]
        for r in rows
    ]
    return lines + table(["run", "command", "max RSS MB", "wall s", "exit"], cells)
