"""`saln-train` as users run it: Hydra's --help and --cfg, and one-line errors with exit code 2
that leave nothing behind (saln_exp/cli.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from saln_exp import PROJECT_ROOT
from saln_exp.cli import check_command_line
from saln_exp.errors import UserError


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


def refused_in_one_line(out, log_dir: Path) -> str:
    """The command failed the way a user error must: exit 2, one line, nothing written."""
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert written(log_dir) == [], "a refused command must create no directory"
    return lines[0]


def written(root: Path) -> list[Path]:
    return sorted(root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trainer.epoch=3"], "unknown key trainer.epoch; did you mean trainer.epochs?"),
        (["+trainer.epoch=3"], "unknown key trainer.epoch; did you mean trainer.epochs?"),
        (["-m", "seed=0,1", "dataset.batch_sise=8"], "did you mean dataset.batch_size?"),
        (["selector=sal"], "selector=sal: there is no such selector; did you mean saln?"),
        (["model=resnet50"], "model=resnet50: there is no such model; did you mean resnet18?"),
        (["-m", "selector=saln,sal"], "did you mean saln?"),
        (["-m", "hydra/launcher=slurmm", "seed=0,1"], "did you mean slurm?"),
        (["+experiment=compare_ofline"], "did you mean compare_offline?"),
    ],
    ids=[
        "key",
        "plus-key",
        "sweep-key",
        "choice",
        "model",
        "sweep-choice",
        "launcher",
        "experiment",
    ],
)
def test_a_misspelt_key_or_choice_is_one_line_with_the_closest_one(tmp_path, args, expected):
    out = run_cli(*args, f"paths.log_dir={tmp_path / 'logs'}")
    assert expected in refused_in_one_line(out, tmp_path)


@pytest.mark.parametrize(
    "override",
    ["selector.filter_ratio=1.5", "selector=jest selector.n_chunks=0", "model.name=resnet50"],
    ids=["value", "selector-option", "model-name"],
)
def test_a_refused_value_leaves_no_run_directory(tmp_path, override):
    out = run_cli(*override.split(), f"paths.log_dir={tmp_path / 'logs'}")
    line = refused_in_one_line(out, tmp_path)
    assert "Traceback" not in out.stderr and override.split()[-1].split("=")[0] in line


@pytest.mark.parametrize("key", ["selector.name", "dataset.name", "model.name"])
def test_a_name_with_dotdot_creates_no_directory_anywhere(tmp_path, key):
    """The default run directory ends in <dataset>_<model>_<selector>: a '/..' in one of them
    would put the directory outside paths.log_dir (here five levels below tmp_path)."""
    log_dir = tmp_path / "a" / "b" / "c" / "logs"
    out = run_cli(f"{key}=../../../../../escape", f"paths.log_dir={log_dir}")
    line = refused_in_one_line(out, tmp_path)
    assert line.startswith(f"error: {key}='../../../../../escape' would be part of the name")


def test_a_sweep_without_m_is_one_line(tmp_path):
    out = run_cli("selector=saln,jest", f"paths.log_dir={tmp_path / 'logs'}")
    assert "is a sweep: add -m" in refused_in_one_line(out, tmp_path)


def test_a_swept_name_with_a_slash_is_refused_before_the_sweep_starts(tmp_path):
    out = run_cli("-m", "selector.name=saln,a/b", "hydra.sweep.subdir=${selector.name}",
                  f"paths.log_dir={tmp_path / 'logs'}")  # fmt: skip
    assert "selector.name='a/b' would be part of the name" in refused_in_one_line(out, tmp_path)


@pytest.mark.parametrize(
    "override", ["trainer.epoch=3", "selector=sal", "selector.filter_ratio=1.5"]
)
def test_a_command_line_mistake_is_found_before_torch_is_imported(override):
    """What makes the error quick: torch and the registries are imported only for a command
    line that can run."""
    probe = (
        "import sys\n"
        "from saln_exp.cli import check_command_line\n"
        "from saln_exp.errors import UserError\n"
        f"try:\n    check_command_line([{override!r}])\nexcept UserError as err:\n    print(err)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    message, torch_imported = out.stdout.strip().splitlines()
    assert torch_imported == "False" and message, out.stdout


def conf_groups() -> list[tuple[str, str]]:
    """(group, one of its choices) for every config group of conf/, and Hydra's launchers."""
    conf = PROJECT_ROOT / "conf"
    groups = [d for d in sorted(conf.iterdir()) if d.is_dir() and d.name not in ("hydra", "local")]
    pairs = [(d.name, sorted(d.glob("*.yaml"))[0].stem) for d in groups]
    return [*pairs, ("hydra/launcher", "local")]


@pytest.mark.parametrize(("group", "choice"), conf_groups())
def test_every_group_names_the_closest_choice(group, choice):
    """A choice with one letter too many: the choice itself is the closest of its group."""
    with pytest.raises(
        UserError, match=f"^{group}={choice}x: there is no such {group}; did you mean {choice}\\?"
    ):
        check_command_line([f"{group}={choice}x"])


@pytest.mark.parametrize(
    "key",
    ["seed", "trainer.epochs", "dataset.batch_size", "dataset.label_noise.rate", "eval.batch_size",
     "model.name", "optimizer.lr", "scheduler.name", "selector.filter_ratio", "prune.name",
     "logger.mode", "paths.data_dir"],
)  # fmt: skip
def test_every_key_names_the_closest_key(key):
    with pytest.raises(UserError, match=f"^unknown key {key}x; did you mean {key}\\?"):
        check_command_line([f"{key}x=1"])


def test_help_cfg_and_a_sweep_still_reach_hydra(tmp_path):
    """Commands that are not a run go to Hydra as before: --cfg prints even a wrong choice's
    error the Hydra way; a correct sweep runs."""
    assert "Could not find 'selector/sal'" in run_cli("--cfg", "job", "selector=sal").stderr
    sweep = tmp_path / "sweep"
    out = run_cli("-m", "selector=none,uniform", "trainer.epochs=1", "model=fcnet",
                  "model.hidden=8", "dataset.image_size=8", "logger=none",
                  "trainer.progress=false", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert (sweep / "0" / "train.log").exists()  # the log keeps its name (hydra.job.name)


@pytest.mark.slow
def test_bad_value_from_the_command_line_is_one_line_exit_2(tmp_path):
    out = run_cli("selector.filter_ratio=1.5", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == ["error: selector.filter_ratio must be a number in [0.0, 1.0), got 1.5"]
