"""`saln-train` as users run it: Hydra's --help and --cfg, and one-line errors with exit code 2."""

from __future__ import annotations

import pytest
import yaml

from conftest import run_cli


def test_help_lists_the_config_groups_and_examples():
    out = run_cli("--help")
    assert out.returncode == 0
    for group in (
        "dataset:",
        "model:",
        "selector:",
        "optimizer:",
        "scheduler:",
        "logger:",
        "prune:",
        "experiment:",
    ):
        assert group in out.stdout
    for choice in ("digits", "cifar10", "saln", "jest", "accuracy_epoch", "resnet18_imagenet"):
        assert choice in out.stdout
    assert "saln-train -m" in out.stdout


def test_cfg_job_prints_the_composed_config():
    out = run_cli("--cfg", "job", "selector=jest", "dataset=cifar10")
    assert out.returncode == 0
    cfg = yaml.safe_load(out.stdout)
    assert cfg["selector"]["name"] == "jest"
    assert cfg["dataset"]["name"] == "cifar10"
    assert cfg["selector"]["filter_ratio"] == 0.8
    assert cfg["dataset"]["batch_size"] >= 1


def test_unknown_group_choice_is_hydras_error():
    out = run_cli("selector=nonexistent")
    assert out.returncode != 0
    assert "nonexistent" in out.stderr and "selector" in out.stderr


@pytest.mark.slow
def test_bad_value_from_the_command_line_is_one_line_exit_2(tmp_path):
    out = run_cli("selector.filter_ratio=1.5", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == ["error: selector.filter_ratio must be a number in [0.0, 1.0), got 1.5"]
