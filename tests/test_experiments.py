"""The experiment files (one per paper table): every point of every sweep composes into a valid
run with the paper's settings, and every file runs end to end through the CLI with smoke=true."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF_DIR, run_cli
from saln_exp.config import validate
from saln_exp.report import cli as report_cli
from saln_exp.selectors import build_selector

EXPERIMENT_DIR = Path(CONF_DIR) / "experiment"
EXPERIMENTS = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))

# What each experiment must set (Table 4.1's baseline as Appendix II corrects it; SALN section 3-4)
EXPECTED = {
    "saln_pets": {"dataset.name": "pets", "model.name": "resnet18_imagenet", "model.pretrained": True,
                  "optimizer.lr": 0.001, "optimizer.momentum": 0.9, "optimizer.weight_decay": 0.0,
                  "trainer.epochs": 25, "dataset.val_fraction": 0.2, "scheduler.name": "none"},
    "saln_cifar10": {"dataset.name": "cifar10", "model.name": "resnet18_imagenet", "model.pretrained": True,
                     "optimizer.lr": 0.001, "trainer.epochs": 25, "dataset.val_fraction": 0.2, "dataset.batch_size": 64},
    "assist_4_4": {"dataset.name": "mnist", "optimizer.lr": 0.1, "optimizer.weight_decay": 5e-4, "dataset.batch_size": 1024,
                   "scheduler.name": "none", "trainer.epochs": 300, "dataset.augment": False},
    "assist_4_5": {"dataset.name": "mnist", "model.name": "fcnet", "optimizer.lr": 0.01, "dataset.batch_size": 256,
                   "scheduler.name": "exponential", "scheduler.gamma": 0.995, "trainer.epochs": 500},
    "assist_4_6": {"dataset.name": "cifar10", "model.name": "resnet18", "optimizer.lr": 0.1, "scheduler.name": "exponential",
                   "scheduler.gamma": 0.995, "trainer.epochs": 300, "dataset.augment": True},
    "assist_4_7": {"dataset.name": "cifar10", "model.name": "fcnet", "optimizer.lr": 0.01, "dataset.batch_size": 512,
                   "scheduler.name": "exponential", "trainer.epochs": 500, "dataset.augment": True},
    "assist_4_8": {"dataset.name": "cifar100", "model.name": "resnet18", "optimizer.lr": 0.1, "scheduler.name": "none",
                   "trainer.epochs": 300, "dataset.augment": True},
    "assist_4_9": {"dataset.name": "cifar100", "model.name": "fcnet", "optimizer.lr": 0.01, "dataset.batch_size": 512,
                   "scheduler.name": "exponential", "trainer.epochs": 500, "dataset.augment": True},
    "compare_offline": {"dataset.name": "digits", "model.name": "lenet", "trainer.epochs": 10},
    "compare_mnist": {"dataset.name": "mnist", "model.name": "lenet", "trainer.epochs": 8, "optimizer.lr": 0.1,
                      "dataset.batch_size": 1024, "dataset.val_fraction": 0.2, "dataset.normalize": True},
}  # fmt: skip
# ASSIST's filtering modes: the selector file -> (name, accumulate, batchwise, the thesis' row)
FILTERING = {
    "none": ("none", False, None, "none"),
    "accuracy": ("accuracy", True, None, "batchwise"),
    "accuracy_epoch": ("accuracy_epoch", False, False, "epochwise"),
    "accuracy_epoch_batch": ("accuracy_epoch", True, True, "epoch+batch"),
}
SALN_METHODS = {"none": "standard", "saln_paper": "saln", "jest": "jest", "uniform": "uniform"}
# One job per experiment for the smoke run: the combination that exercises the most code. The
# ResNet-18 experiments run one epoch instead of smoke's two: a ResNet epoch costs 10-30 s on two CPU
# cores, and multi-epoch behaviour (epoch filtering, accumulation across epochs) is covered by the
# LeNet / FCNet ones.
ONE_EPOCH = "trainer.epochs=1"
SMOKE_JOB = {
    "saln_pets": ["selector=saln_paper", ONE_EPOCH],
    "saln_cifar10": ["selector=saln_paper", ONE_EPOCH],
    "assist_4_4": ["model=lenet", "selector=accuracy_epoch_batch"],
    "assist_4_5": ["model.hidden=100", "selector=accuracy"],
    "assist_4_6": ["dataset.batch_size=1024", "selector=accuracy", ONE_EPOCH],
    "assist_4_7": ["model.hidden=100", "selector=accuracy"],
    "assist_4_8": ["dataset.batch_size=1024", "selector=accuracy", ONE_EPOCH],
    "assist_4_9": ["model.hidden=100", "selector=accuracy"],
    "compare_offline": ["selector=jest"],
    "compare_mnist": ["selector=rho", "selector.filter_ratio=0.8"],
}


def sweep_params(name: str) -> dict[str, list[str]]:
    """The experiment's hydra.sweeper.params as lists of values."""
    params = yaml.safe_load((EXPERIMENT_DIR / f"{name}.yaml").read_text())["hydra"]["sweeper"][
        "params"
    ]
    return {key: str(values).split(",") for key, values in params.items()}


def grid(name: str) -> list[list[str]]:
    """Every job of the experiment's sweep as override lists (seeds aside: they do not compose)."""
    params = {k: v for k, v in sweep_params(name).items() if k != "seed"}
    return [
        [f"{k}={v}" for k, v in zip(params, combo, strict=True)]
        for combo in itertools.product(*params.values())
    ]


def test_every_experiment_is_checked():
    assert set(EXPERIMENTS) == set(EXPECTED) == set(SMOKE_JOB)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_file_shape(name):
    text = (EXPERIMENT_DIR / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    raw = yaml.safe_load(text)
    assert raw["experiment_name"] == name and raw["tags"]
    assert "seed" in sweep_params(name)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_sweep_point_composes_with_the_papers_settings(name):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        configs = [
            (o, compose(config_name="config", overrides=[f"experiment={name}", *o]))
            for o in grid(name)
        ]
    for overrides, cfg in configs:
        validate(cfg)
        build_selector(cfg.selector, seed=0)  # every selector option is one the selector has
        assert cfg.experiment_name == name
        expected = EXPECTED[name]
        assert {key: _select(cfg, key) for key in expected} == pytest.approx(expected), overrides
        chosen = dict(o.split("=", 1) for o in overrides)
        for key, value in chosen.items():
            if "." in key:
                assert str(_select(cfg, key)) == value
        if name.startswith("assist"):
            selector, accumulate, batchwise, row = FILTERING[chosen["selector"]]
            assert (cfg.selector.name, cfg.selector.accumulate, cfg.selector.get("batchwise")) == (
                selector,
                accumulate,
                batchwise,
            )
            assert cfg.paper_rows[chosen["selector"]] == row
        if name.startswith("saln"):
            assert cfg.paper_rows[chosen["selector"]] == SALN_METHODS[chosen["selector"]]
        if chosen.get("selector") == "saln_paper":
            assert (cfg.selector.features, cfg.selector.backbone, cfg.selector.filter_ratio) == (
                "pretrained",
                "resnet50",
                0.8,
            )


def _select(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def test_sweep_sizes_match_the_tables():
    sizes = {name: len(grid(name)) * len(sweep_params(name)["seed"]) for name in EXPERIMENTS}
    assert sizes == {
        "saln_pets": 12, "saln_cifar10": 12, "assist_4_4": 8, "assist_4_5": 6, "assist_4_6": 10,
        "assist_4_7": 6, "assist_4_8": 8, "assist_4_9": 6, "compare_offline": 21, "compare_mnist": 3,
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_run_through_the_cli(name, tmp_path, capsys):
    """`saln-train -m experiment=<name> smoke=true`, narrowed to one job (command-line values
    replace the file's sweep values), then `saln-report` turns the sweep into its table."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "-m", f"experiment={name}", "smoke=true", "seed=0", *SMOKE_JOB[name],
        "logger=none", "trainer.progress=false", f"hydra.sweep.dir={sweep_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}", f"paths.data_dir={tmp_path / 'data'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "completed"
    summary = json.loads((sweep_dir / "0" / "summary.json").read_text())
    assert summary["experiment"] == name and summary["dataset"] == "synthetic"
    # a smoke run is never shown beside the paper's values: its paper table stays empty and says
    # why; the comparison table (no paper column) shows it
    if not name.startswith("compare"):
        assert report_cli.main([str(sweep_dir), "--table", name, "--no-figures"]) == 0
        out = capsys.readouterr().out
        assert "(n=1)" not in out and "1 smoke/debug run(s) left out" in out
    assert report_cli.main([str(sweep_dir), "--table", "compare", "--no-figures"]) == 0
    assert "(n=1)" in capsys.readouterr().out
