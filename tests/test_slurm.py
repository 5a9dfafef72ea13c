"""Sweeps on a real Slurm cluster (`make slurm-up` starts a one-node one on localhost; CI does).

Shown here: a two-job sweep through hydra-submitit-launcher; a job cancelled with scancel is
reported as failed instead of hanging the sweep; a job requeued by Slurm (as on preemption) and
a job sent submitit's preemption signal both come back and resume from their last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN

SLURM_ARGS = (
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=20",
)
SMALL = (
    "logger=none",
    "trainer.progress=false",
    "model=fcnet",
    "model.hidden=32",
    "dataset.image_size=8",
)


def cluster_state() -> str | None:
    """None when a cluster answers, else why the tests are skipped."""
    if shutil.which("sbatch") is None:
        return "sbatch not found: start a local cluster with `make slurm-up` (scripts/slurm_local_up.sh)"
    probe = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or "up" not in probe.stdout:
        return f"no Slurm controller answers (sinfo: {probe.stderr.strip()[:120]}); run `make slurm-up`"
    return None


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(cluster_state() is not None, reason=str(cluster_state())),
]


def start_sweep(*args: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        [str(BIN / "saln-train"), "-m", *SLURM_ARGS, *SMALL, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def epochs_logged(job_dir: Path) -> int:
    path = job_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def slurm_job_id(job_dir: Path) -> str | None:
    path = job_dir / "status.json"
    return json.loads(path.read_text()).get("slurm_job_id") if path.exists() else None


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_two_job_sweep_on_slurm(tmp_path):
    sweep = tmp_path / "sweep"
    code, _, err = finish(
        start_sweep("selector=none,saln", "trainer.epochs=2", f"hydra.sweep.dir={sweep}")
    )
    assert code == 0, err[-3000:]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["epochs"] == 2
        assert json.loads((sweep / job / "status.json").read_text())["slurm_job_id"]
    assert json.loads((sweep / "sweep.json").read_text())["n_failed"] == 0


def test_a_cancelled_job_is_reported_failed_and_the_sweep_does_not_hang(tmp_path):
    sweep = tmp_path / "sweep"
    proc = start_sweep("trainer.epochs=1,500", f"hydra.sweep.dir={sweep}")
    long_job = sweep / "1"
    wait_for(lambda: epochs_logged(long_job) >= 1, 300, "the long job to train")
    subprocess.run(["scancel", slurm_job_id(long_job)], check=True)
    code, _, err = finish(proc, timeout=300)
    assert code == 1, err[-3000:]
    result = json.loads((sweep / "sweep.json").read_text())
    jobs = {j["dir"]: j for j in result["jobs"]}
    assert jobs["0"]["status"] == "completed"
    assert jobs["1"]["status"] == "failed" and "CANCELLED" in jobs["1"]["error"]
    assert "1 job(s) failed" in err


@pytest.mark.parametrize("how", ["scontrol requeue", "submitit preemption signal"])
def test_a_preempted_job_resumes_from_its_checkpoint(tmp_path, how):
    sweep = tmp_path / "sweep"
    proc = start_sweep("trainer.epochs=60", "dataset.batch_size=16", f"hydra.sweep.dir={sweep}")
    job = sweep / "0"
    wait_for(lambda: epochs_logged(job) >= 2, 300, "two epochs")
    job_id = slurm_job_id(job)
    if how == "scontrol requeue":
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    else:  # what Slurm sends before preempting or timing out a job; submitit checkpoints and requeues
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    code, _, err = finish(proc, timeout=600)
    assert code == 0, err[-3000:]
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 61))  # every epoch once
    assert json.loads((job / "status.json").read_text())["slurm_restart_count"] >= 1
    assert "resumed from" in (job / "train.log").read_text()
    assert json.loads((job / "summary.json").read_text())["status"] == "completed"


def test_two_tasks_of_one_job_are_one_distributed_training(tmp_path):
    """`hydra.launcher.tasks_per_node=2`: submitit starts two tasks of one Slurm job, each is one
    rank (gloo on CPU), and together they give one process's metrics.jsonl up to the order of
    floating-point reductions (the tolerance of tests/test_distributed.py)."""
    from test_distributed import ABS, REL, _metrics, _run, assert_same_metrics

    overrides = ("selector=topk_loss", "trainer.epochs=2", "dataset.batch_size=64")
    sweep = tmp_path / "sweep"
    code, _, err = finish(
        start_sweep(*overrides, "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}")
    )
    assert code == 0, err[-3000:]
    log = (sweep / "0" / "train.log").read_text()
    assert "rank 0 of 2 processes" in log, log[-2000:]
    _run(tmp_path / "one", *overrides)
    assert_same_metrics(_metrics(tmp_path / "one"), _metrics(sweep / "0"), rel=REL, abs_=ABS)
