"""Shared fixtures: compose real configs with Hydra's compose API, shrink them, and point every
output at a temporary directory, then call the runner directly (no subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from saln_exp import PROJECT_ROOT

CONF_DIR = str(PROJECT_ROOT / "conf")
BIN = Path(sys.executable).parent

# W&B must never reach the network from tests, whatever the developer's environment says.
os.environ.pop("WANDB_API_KEY", None)
os.environ["WANDB_SILENT"] = "true"

# the per-epoch keys that measure time: the only ones two same-seed runs may differ in
TIME_KEYS = {f"time/{phase}_s" for phase in ("train", "select", "eval", "diag", "prepare", "wall")}


# In-process runs share two cores with whatever else runs; one thread avoids oversubscription
# (small ops get many times slower when two busy threads fight over contended cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def restore_torch_determinism():
    """`run()` turns on deterministic algorithms process-wide; give every test a clean slate."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def compose_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """The real config tree with `overrides`, outputs under `tmp_path`, no W&B, no progress bars."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        if "paths.data_dir" not in " ".join(overrides):
            cfg.paths.data_dir = str(tmp_path / "data")
        cfg.trainer.progress = False
        cfg.trainer.threads = 1  # see torch.set_num_threads(1) above
    return cfg


@pytest.fixture
def count_opens(monkeypatch):
    """Every PIL.Image.open, to see what a load decodes (a cache hit opens nothing)."""
    import PIL.Image

    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(
        PIL.Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k)
    )
    return opened


@pytest.fixture
def make_cfg(tmp_path):
    return lambda *overrides: compose_cfg(tmp_path, *overrides)


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`saln-train ...` in a subprocess, the way a user runs it."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [str(BIN / "saln-train"), *args], cwd=cwd or PROJECT_ROOT, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def printed_command(output: str) -> str:
    """The command an interrupted run or sweep printed to resume it: the line after the one
    that says `to resume ..., run:`, taken as is."""
    lines = output.splitlines()
    said = [i for i, line in enumerate(lines) if "to resume" in line and line.endswith(", run:")]
    assert said and said[-1] + 1 < len(lines), f"no resume command printed:\n{output[-3000:]}"
    return lines[said[-1] + 1]


def in_a_shell(command: str, cwd: Path, env: dict | None = None, timeout: int = 600):
    """`command` pasted into bash, in `cwd`, with this environment's bin first on PATH (an
    activated virtual environment)."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
