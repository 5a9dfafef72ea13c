"""The GPU-oriented switches (autocast, channels_last, torch.compile) checked for equivalence on
CPU: the same run with each switch on ends where the float32 run ends, within precision."""

from __future__ import annotations

import json

import pytest
import torch

from saln_exp.train import run
from saln_exp.trainer import autocast_factory

BASE = (
    "selector=uniform",
    "selector.filter_ratio=0.5",
    "model=lenet",
    "trainer.epochs=3",
    "dataset.batch_size=64",
)


def final_metrics(make_cfg, tmp_path, name, *overrides):
    cfg = make_cfg(*BASE, *overrides)
    cfg.paths.output_dir = str(tmp_path / name)
    run(cfg)
    rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return json.loads(rows[-1])


def test_bf16_autocast_trains_like_fp32(make_cfg, tmp_path):
    fp32 = final_metrics(make_cfg, tmp_path, "fp32")
    bf16 = final_metrics(make_cfg, tmp_path, "bf16", "trainer.precision=bf16")
    assert bf16["test/acc"] == pytest.approx(fp32["test/acc"], abs=0.08)
    assert bf16["test/loss_mean"] == pytest.approx(fp32["test/loss_mean"], rel=0.25)


def test_autocast_keeps_the_loss_in_float32():
    with autocast_factory(torch.device("cpu"), "bf16")():
        logits = torch.nn.Linear(4, 3)(torch.randn(2, 4))
    assert logits.dtype == torch.bfloat16
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1]))
    assert loss.dtype == torch.float32


def test_channels_last_gives_the_same_run(make_cfg, tmp_path):
    plain = final_metrics(make_cfg, tmp_path, "plain")
    cl = final_metrics(make_cfg, tmp_path, "cl", "trainer.channels_last=true")
    assert cl["test/acc"] == pytest.approx(plain["test/acc"], abs=0.02)
    assert cl["test/loss_mean"] == pytest.approx(plain["test/loss_mean"], rel=0.02)


@pytest.mark.slow
def test_torch_compile_gives_the_same_run(make_cfg, tmp_path):
    plain = final_metrics(make_cfg, tmp_path, "plain")
    compiled = final_metrics(make_cfg, tmp_path, "compiled", "trainer.compile=true")
    assert compiled["test/acc"] == pytest.approx(plain["test/acc"], abs=0.02)
    assert compiled["test/loss_mean"] == pytest.approx(plain["test/loss_mean"], rel=0.02)
