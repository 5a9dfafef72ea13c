"""The field's baselines (InfoBatch, RS2, Selective-Backprop, importance sampling, DivBS) run
through the CLI on every dataset and every model, as smoke runs (synthetic stand-ins of each
dataset's shape): one multirun per axis. The dataset axis runs LeNet: what differs between
datasets is the shape (channels, size, classes), which every model takes the same way, and
ResNet-18 there cost 5 of CI's minutes; the model axis runs every model, ResNet-18 included."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

BASELINES = "infobatch,rs2,selective_backprop,importance,divbs"


@pytest.mark.slow
@pytest.mark.parametrize(
    "axis",
    ["dataset=digits,mnist,fashion_mnist,svhn,cifar10,cifar100,cinic10,pets model=lenet",
     "dataset=digits model=lenet,fcnet,resnet18,resnet18_imagenet"],
    ids=["every-dataset", "every-model"],
)  # fmt: skip
def test_every_baseline_runs_on_every_dataset_and_model(axis, tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli(
        "-m", "smoke=true", f"selector={BASELINES}", *axis.split(), "logger=none",
        "trainer.progress=false", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["n_failed"] == 0 and record["n_jobs"] == 5 * (
        8 if "dataset=digits,mnist" in axis else 4
    )  # imagefolder's shape is in the user's files: its smoke run needs them (test_datasets_more)
