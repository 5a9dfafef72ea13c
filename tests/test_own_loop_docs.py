"""docs/own-loop.md: every example runs exactly as printed (each code block written to a file and
run as a script from the repository root, on the real MNIST in data/MNIST/raw), and says what it
should: the plain loops learn MNIST, the DDP loop on two processes ends where one process does."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from saln_exp import PROJECT_ROOT

PAGE = PROJECT_ROOT / "docs" / "own-loop.md"

pytestmark = pytest.mark.skipif(
    not (PROJECT_ROOT / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists(),
    reason="no MNIST in data/MNIST/raw (make mnist)",
)


def examples() -> dict[str, str]:
    """The page's python blocks by the heading they appear under."""
    blocks, heading = {}, None
    for part in re.split(
        r"(^## [^\n]*$|^```python\n.*?^```$)", PAGE.read_text(), flags=re.M | re.S
    ):
        if part.startswith("## "):
            heading = part[3:].strip()
        elif part.startswith("```python"):
            assert heading not in blocks, f"two examples under {heading!r}"
            blocks[heading] = part.removeprefix("```python\n").removesuffix("```")
    return blocks


def run(code: str, tmp_path: Path, *launcher: str) -> str:
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [*launcher, str(script)] if launcher else [sys.executable, str(script)]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def accuracy(output: str) -> float:
    return float(re.search(r"test accuracy (\S+)", output).group(1))


def test_the_page_has_the_examples_it_promises():
    assert set(examples()) == {
        "Plain PyTorch, `topk_loss`", "RHO-LOSS with a reference model",
        "Epoch-level selectors: a sampler", "Several processes (DDP)", "Lightning",
    }  # fmt: skip
    first = examples()["Plain PyTorch, `topk_loss`"]
    assert len(first.strip().splitlines()) <= 30


@pytest.mark.parametrize(
    "heading", ["Plain PyTorch, `topk_loss`", "RHO-LOSS with a reference model"]
)
def test_the_plain_loops_learn_mnist(heading, tmp_path):
    assert accuracy(run(examples()[heading], tmp_path)) > 0.8


def test_the_sampler_example_prunes_infobatch_epochs(tmp_path):
    sizes = [int(n) for n in re.findall(r"epoch \d: (\d+) samples", run(examples()["Epoch-level selectors: a sampler"], tmp_path))]  # fmt: skip
    assert sizes[0] == 2048 and 0 < sizes[1] < 2048


@pytest.mark.slow
def test_the_ddp_example_on_two_processes_ends_where_one_process_does(tmp_path):
    """Global selection on 2 gloo ranks: the one-process choices and gradients, so the same test
    loss up to the order of floating-point sums."""
    code = examples()["Several processes (DDP)"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    losses = [
        float(re.search(r"test loss (\S+)", run(code, tmp_path, *torchrun, f"--nproc_per_node={n}")).group(1))
        for n in (1, 2)
    ]  # fmt: skip
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_the_lightning_example_learns_mnist(tmp_path):
    if not os.environ.get("CI"):  # CI installs the extra; elsewhere it may be absent
        pytest.importorskip("lightning")
    else:
        importlib.import_module("lightning")
    assert accuracy(run(examples()["Lightning"], tmp_path)) > 0.8
