"""Section 9: start-up time of `saln-train`: the seconds a user waits for the one line of a
command-line mistake, and for `--help`, each a fresh process; beside them, the import of torch
alone (what a command that imports it pays first)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.memory import saln_train_command
from bench.settings import Log, Settings
from bench.tables import ms, table
from bench.timing import interleaved, summary

KEY = "startup"  # its target (a misspelt key in at most 2 s) is in bench/targets.py

CASES = (  # label, the command line a user types, the exit status it must end with
    ("misspelt key", "saln-train trainer.epoch=3", 2),
    ("wrong choice", "saln-train selector=sal", 2),
    ("wrong value", "saln-train selector.filter_ratio=1.5", 2),
    ("--help", "saln-train --help", 0),
    ("reference: torch's import", "python -c 'import torch'", 0),
)


def measure(st: Settings, device: torch.device, workdir: Path, log: Log) -> list[dict[str, Any]]:
    log_dirs = {label: workdir / f"startup{i}" for i, (label, _, _) in enumerate(CASES)}
    argv = {label: [*saln_train_command(), *line.split()[1:], f"paths.log_dir={log_dirs[label]}"]
            for label, line, _ in CASES[:-1]}  # fmt: skip
    argv[CASES[-1][0]] = [sys.executable, "-c", "import torch"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    last: dict[str, subprocess.CompletedProcess] = {}

    def launch(label: str) -> Callable[[], None]:
        def once() -> None:
            last[label] = subprocess.run(argv[label], capture_output=True, text=True, env=env)

        return once

    # the rounds alternate the order of the commands, so a busy moment slows them alike
    seconds = interleaved({label: launch(label) for label in argv}, st.startup_rounds,
                          torch.device("cpu"))  # fmt: skip
    rows = []
    for label, line, wanted in CASES:
        proc = last[label]
        rows.append(
            {
                "case": label,
                "command": line,
                "seconds": summary(seconds[label]),
                "exit": proc.returncode,
                "expected_exit": wanted,
                "stderr_lines": len(proc.stderr.strip().splitlines()),
                "directory_created": log_dirs[label].exists(),  # a refusal creates none
            }
        )
        log(f"  {label}: {rows[-1]['seconds']['median']:.2f} s, exit {proc.returncode}")
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## 9. Start-up time of `saln-train` (a fresh process each)", ""]
    cells = [
        [r["case"], f"`{r['command']}`", ms(r["seconds"]), f"{r['exit']} (wanted {r['expected_exit']})",
         r["stderr_lines"], "yes" if r["directory_created"] else "no"]
        for r in rows
    ]  # fmt: skip
    return lines + table(
        ["case", "command", "seconds", "exit", "stderr lines", "directory created"], cells
    )
