"""Multirun sweeps: every job in its own directory, sweep.json, failures recorded without taking
the sweep down, W&B groups per sweep, and the submitit local launcher and Optuna sweeper."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import time

import pytest
from filelock import FileLock
from omegaconf import OmegaConf

from conftest import printed_command, run_cli
from saln_exp import rundir
from saln_exp.rundir import RunFiles
from wandb_records import run_info

SMALL = (
    "model=fcnet",
    "model.hidden=32",
    "dataset.image_size=8",
    "trainer.epochs=1",
    "trainer.progress=false",
)


def load_sweep(sweep_dir):
    return json.loads((sweep_dir / "sweep.json").read_text())


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_others_complete(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = ["-m", "selector=uniform", "selector.filter_ratio=0.5,1.5", "optimizer.lr=0.05,1e12",
               "optimizer.momentum=0.99", "logger=wandb", "logger.mode=offline", *SMALL,
               f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    out = run_cli(*command, env={"WANDB_MODE": "offline"})
    assert out.returncode == 1, out.stderr[-2000:]
    sweep = load_sweep(sweep_dir)
    assert sweep["n_jobs"] == 4 and sweep["status"] == "failed"
    by_dir = {j["dir"]: j for j in sweep["jobs"]}
    assert by_dir["0"]["status"] == "completed"  # filter_ratio=0.5, lr=0.05
    assert (sweep_dir / "0" / "summary.json").exists()
    assert "filter_ratio must be" in by_dir["2"]["error"]  # filter_ratio=1.5: bad value
    assert "loss became" in by_dir["1"]["error"]  # lr=1e12: diverged
    assert sweep["n_failed"] == 3
    assert "3 job(s) failed" in out.stderr and "filter_ratio=1.5" in out.stderr
    # the command that reruns what did not complete, skipping what did
    assert shlex.split(printed_command(out.stderr))[1:] == [
        *command[:-1],
        f"hydra.sweep.dir={sweep_dir}",
    ]
    # one W&B group per sweep, job type = selector, run named from its overrides
    info = run_info(next((sweep_dir / "0" / "wandb").rglob("run-*.wandb")))
    assert info["group"] == f"optimizer.lr+selector.filter_ratio {sweep_dir.name}"
    assert info["job_type"] == "uniform"
    assert "selector.filter_ratio=0.5" in info["name"]


@pytest.mark.slow
def test_a_job_another_sweep_is_running_is_named_so_and_not_failed(tmp_path):
    """Two sweeps into one hydra.sweep.dir: the job the other sweep holds is skipped, and this
    sweep says so instead of `error: 1 job(s) failed: #1 (...): None`."""
    sweep_dir, busy = tmp_path / "sweep", tmp_path / "sweep" / "1"
    busy.mkdir(parents=True)
    with FileLock(busy / rundir.LOCK).acquire(timeout=0):  # the other sweep's job #1, running
        RunFiles(busy).write_status("running", overrides=["seed=1"])
        out = run_cli("-m", "seed=0,1", "logger=none", "selector=uniform", *SMALL,
                      f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "error:" not in out.stderr and "None" not in out.stderr, out.stderr[-3000:]
    logged = out.stdout + out.stderr
    assert "job failed" not in logged and "job not run here: another saln-train" in logged
    owner = f"pid {os.getpid()} on {socket.gethostname()}"
    assert f"busy    1  seed=1  running in another process ({owner})" in out.stderr
    assert "sweep: 1/2 jobs completed, 1 running in another process" in out.stderr
    sweep = load_sweep(sweep_dir)
    assert sweep["status"] == "running elsewhere" and sweep["n_failed"] == 0
    assert rundir.read_json(busy / rundir.STATUS)["status"] == "running"  # not touched


def test_sweep_over_selectors_and_seeds_and_latest_link(tmp_path):
    log_dir = tmp_path / "logs"
    out = run_cli(
        "-m", "selector=none,uniform", "seed=0,1", "logger=none", *SMALL, f"paths.log_dir={log_dir}"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    latest = log_dir / "sweeps" / "latest"
    assert latest.is_symlink()
    sweep = load_sweep(latest)
    assert sweep["n_jobs"] == 4 and sweep["n_failed"] == 0
    assert sorted(j["dir"] for j in sweep["jobs"]) == ["0", "1", "2", "3"]
    seeds = {
        json.loads((latest / j["dir"] / "summary.json").read_text())["seed"] for j in sweep["jobs"]
    }
    assert seeds == {0, 1}


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    out = run_cli(
        "-m",
        "hydra/launcher=local",
        "selector=none,saln",
        "logger=none",
        *SMALL,
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "summary.json").read_text())["status"] == "completed"
    assert load_sweep(sweep_dir)["n_failed"] == 0


@pytest.mark.slow
def test_optuna_search_runs_on_the_offline_default(tmp_path):
    sweep_dir = tmp_path / "sweep"
    out = run_cli(
        "hparams_search=digits_optuna",
        "hydra.sweeper.n_trials=3",
        "logger=none",
        *SMALL,
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (sweep_dir / "optimization_results.yaml").exists()
    assert load_sweep(sweep_dir)["n_jobs"] == 3


def test_the_wandb_group_of_a_sweep_says_what_it_is():
    from saln_exp.sweep import sweep_group

    assert (
        sweep_group("assist_4_5", ["-m", "experiment=assist_4_5", "seed=1,2"], "t")
        == "assist_4_5 t"
    )
    command = ["-m", "selector=none,saln", "seed=range(3)", "logger=wandb", "hydra.sweep.dir=a,b"]
    assert sweep_group(None, command, "2026-12-01_12-00-00") == "seed+selector 2026-12-01_12-00-00"
    assert sweep_group(None, ["-m", "logger=none"], "t") == "sweep t"


def test_a_sweep_stopped_between_jobs_prints_the_command_that_resumes_it(
    tmp_path, capsys, monkeypatch
):
    """The sweep's own handler (a signal between jobs, or to a parallel launcher's parent)."""
    from saln_exp.resume import SWEEP_COMMAND_ENV
    from saln_exp.sweep import SweepStatus

    monkeypatch.setattr(sys, "argv", ["saln-train", "-m", "seed=0,1", "hydra.sweep.dir=old"])
    monkeypatch.setenv(SWEEP_COMMAND_ENV, "")  # restored (removed) after the test
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    sweep_dir = tmp_path / "sweep"
    try:
        SweepStatus().on_multirun_start(
            OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
        )
        with pytest.raises(SystemExit) as exit_info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs first
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert exit_info.value.code == 128 + signal.SIGTERM
    line = printed_command(capsys.readouterr().err)
    assert shlex.split(line)[1:] == ["-m", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    assert os.environ[SWEEP_COMMAND_ENV] == line  # what the sweep's jobs print
