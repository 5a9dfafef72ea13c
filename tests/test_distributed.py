"""Multi-process training on CPU (gloo, 2 processes through torchrun): the same metrics.jsonl as
one process with the same global batch, up to the order of floating-point reductions, and a
kill -9 of one rank ends the run (no hang) and a rerun resumes to the uninterrupted numbers."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from conftest import in_a_shell, printed_command
from saln_exp import PROJECT_ROOT, distributed
from saln_exp.checkpoint import Checkpoints
from saln_exp.rundir import CHECKPOINT

BIN = Path(sys.executable).parent
SMALL = [
    "model=fcnet", "model.hidden=32", "dataset.image_size=8", "logger=none",
    "trainer.progress=false",
]  # fmt: skip
# one process vs two: the same numbers up to where float sums are taken in another order
# (a share's forward, DDP's gradient average); measured worst relative difference ~4e-7
REL, ABS = 1e-5, 1e-6


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _command(run_dir: Path, *overrides: str, procs: int = 1) -> list[str]:
    train = ["-m", "saln_exp.train", *SMALL, *overrides, f"hydra.run.dir={run_dir}"]
    if procs == 1:
        return [sys.executable, *train]
    return [str(BIN / "torchrun"), f"--nproc_per_node={procs}", "--standalone", *train]


def _run(run_dir: Path, *overrides: str, procs: int = 1, **env: str) -> None:
    done = subprocess.run(
        _command(run_dir, *overrides, procs=procs), env=_env(**env), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(a: list[dict], b: list[dict], rel: float, abs_: float) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        assert set(row_a) == set(row_b)
        for key, x in row_a.items():
            y = row_b[key]
            if key.startswith("time/"):
                continue
            if isinstance(x, float) and math.isnan(x):
                assert isinstance(y, float) and math.isnan(y), key
                continue
            assert y == pytest.approx(x, rel=rel, abs=abs_), (row_a["epoch"], key, x, y)


def test_shares_cover_the_batch_in_order():
    world = distributed.World(rank=0, size=3)
    assert world.sizes(10) == [4, 3, 3]
    assert [world.bounds(10, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert distributed.World(rank=2, size=3).share(10) == slice(7, 10)
    assert world.sizes(2) == [1, 1, 0]  # fewer samples than ranks: a rank gets none


def test_one_process_helpers_are_no_ops():
    assert not distributed.WORLD.active
    t = torch.arange(3.0)
    assert distributed.all_gather_cat(t) is t and distributed.all_reduce_sum(t) is t
    assert distributed.broadcast_object("x") == "x"


EXPORTED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_a_signal_landing_after_the_ranks_agreed_to_go_on_stops_them_after_the_next_batch(
    make_cfg, monkeypatch
):
    """The ranks stop where their all-reduce agrees. A signal that lands on one rank just after
    the epoch's agreement said "go on" must not stop that rank alone at the epoch's end (its peer
    would wait in the next collective until this rank is gone: "lost its peers", no checkpoint
    line); it is agreed on after the next batch, where every rank stops and checkpoints."""
    from saln_exp import stop
    from saln_exp.train import run
    from saln_exp.trainer import Trainer

    asked = []
    agree = Trainer.stop_requested

    def signal_lands_after_the_epoch_agreement(self):
        at_epoch_end = self.progress.order is None
        asked.append((self.progress.epoch, self.progress.cursor, at_epoch_end))
        if at_epoch_end and self.progress.epoch == 1:
            result = agree(self)  # the ranks' answer: no signal yet
            stop.STATE.requested = signal.SIGTERM  # ... which lands now, on this rank
            return result
        return agree(self)

    monkeypatch.setattr(Trainer, "stop_requested", signal_lands_after_the_epoch_agreement)
    cfg = make_cfg("model=fcnet", "model.hidden=16", "dataset.image_size=8",
                   "dataset.batch_size=64", "trainer.epochs=3")  # fmt: skip
    try:
        with pytest.raises(SystemExit) as exit_info:
            run(cfg)
    finally:
        stop.STATE.requested = None
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert asked[-1] == (1, 1, False)  # stopped after epoch 2's first batch, where it was agreed
    progress = Checkpoints(Path(cfg.paths.output_dir)).load()["progress"]
    assert (progress["epoch"], progress["cursor"]) == (1, 1)  # checkpointed there, to resume


def test_a_submitit_slurm_job_of_several_tasks_is_one_distributed_training(monkeypatch):
    env = {
        "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
        "SLURM_STEP_NUM_TASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
    }  # fmt: skip
    # recorded, then unset: monkeypatch undoes what from_env exports when the test ends
    for key in EXPORTED:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    world = distributed.from_env()
    assert (world.rank, world.size, world.local_rank) == (3, 4, 1)
    assert os.environ["MASTER_ADDR"] == "node1" and os.environ["MASTER_PORT"].isdigit()
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == cuda_visible  # every GPU stays visible


@pytest.mark.slow
@pytest.mark.parametrize(
    "selector", [["selector=none"], ["selector=topk_loss", "selector.scope=global"]]
)
def test_two_processes_give_one_process_metrics(tmp_path: Path, selector: list[str]):
    overrides = [*selector, "trainer.epochs=3"]
    _run(tmp_path / "one", *overrides)
    _run(tmp_path / "two", *overrides, procs=2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert_same_metrics(one, two, REL, ABS)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2


@pytest.mark.slow
def test_local_scope_runs_and_counts_every_rank(tmp_path: Path):
    _run(tmp_path / "local", "selector=topk_loss", "selector.scope=local", "trainer.epochs=1",
         procs=2)  # fmt: skip
    (row,) = _metrics(tmp_path / "local")
    # each rank keeps int(32 * 0.5) of its half of every batch of 64: half of all seen samples
    assert row["select/kept_frac"] == pytest.approx(0.5, abs=0.01)
    assert row["samples/seen"] == 1347  # digits' train split, every sample once


def test_local_scope_with_staging_is_refused_by_config_validation(make_cfg, monkeypatch):
    """Ranks staging their own selections would step at different times: one line from the
    config's validation, before any data is read or a model built."""
    from saln_exp.config import validate
    from saln_exp.errors import ConfigError

    cfg = make_cfg("selector=accuracy", "selector.scope=local")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    validate(cfg)  # one process: scope has no meaning, nothing to refuse
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's command line, checked before the run
    with pytest.raises(ConfigError, match=r"scope=local with selector\.accumulate=true"):
        validate(cfg)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(distributed, "WORLD", distributed.World(rank=0, size=2))
    with pytest.raises(ConfigError, match=r"scope=local with selector\.accumulate=true"):
        validate(cfg)


def _pid_of_rank(token: str, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SALN_TEST_TOKEN={token}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def _start_until_checkpoint(command: list[str], run_dir: Path, env: dict) -> subprocess.Popen:
    """Start a run in the background and return once it has written its first checkpoint."""
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not (run_dir / CHECKPOINT).exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)
    return proc


@pytest.mark.slow
def test_kill_9_of_one_rank_ends_the_run_and_a_rerun_resumes(tmp_path: Path):
    overrides = ["selector=topk_loss", "trainer.epochs=30", "trainer.checkpoint_every_steps=7"]
    _run(tmp_path / "whole", *overrides, procs=2)

    run_dir, token = tmp_path / "killed", uuid.uuid4().hex
    command = _command(run_dir, *overrides, procs=2)
    proc = _start_until_checkpoint(command, run_dir, _env(SALN_TEST_TOKEN=token))
    pid = _pid_of_rank(token, rank=1)
    assert pid is not None and proc.poll() is None, "the run ended before a rank could be killed"
    os.kill(pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)  # the surviving rank must not hang
    assert proc.returncode != 0
    assert "rank: 1" in output or "rank 1" in output, output[-3000:]
    assert len(_metrics(run_dir)) < 30

    _run(run_dir, *overrides, procs=2)  # the same command resumes
    assert_same_metrics(_metrics(tmp_path / "whole"), _metrics(run_dir), rel=0.0, abs_=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_the_rank_that_was_killed_is_named_by_its_peer(tmp_path: Path, killed: int):
    """saln-exp's own line names the rank that died, not only the surviving one."""
    run_dir, token = tmp_path / "run", uuid.uuid4().hex
    command = _command(run_dir, "selector=topk_loss", "trainer.epochs=30", procs=2)
    proc = _start_until_checkpoint(command, run_dir, _env(SALN_TEST_TOKEN=token))
    pid = _pid_of_rank(token, rank=killed)
    assert pid is not None and proc.poll() is None, "the run ended before a rank could be killed"
    os.kill(pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    lines = [line for line in output.splitlines() if "lost its peers" in line]
    assert lines, output[-3000:]
    assert lines[0].startswith(f"error: rank {1 - killed} of 2 lost its peers")
    assert lines[0].endswith(f"rank {killed} (pid {pid} on {socket.gethostname()}) died"), lines


def test_a_peer_is_named_only_when_its_process_is_gone(monkeypatch):
    """One process standing in for a store and two peers: a live pid is never called dead."""
    store = torch.distributed.HashStore()
    monkeypatch.setattr(distributed, "_STORE", store)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for rank, pid in ((1, os.getpid()), (2, gone.pid)):
        store.set(distributed._process_key(rank), f"{socket.gethostname()} {pid}")
    world = distributed.World(rank=0, size=4)  # rank 3 never registered
    assert distributed.dead_peers(world, attempts=1) == [
        f"rank 2 (pid {gone.pid} on {socket.gethostname()})"
    ]


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_after_the_same_batch_and_resumes(tmp_path: Path):
    overrides = ["selector=topk_loss", "trainer.epochs=20"]
    _run(tmp_path / "whole", *overrides, procs=2)
    run_dir = tmp_path / "stopped"
    proc = _start_until_checkpoint(_command(run_dir, *overrides, procs=2), run_dir, _env())
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to every rank
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"

    line = printed_command(output)  # torchrun's own command, pasted as printed
    words = shlex.split(line)
    assert Path(words[0]).name == "torchrun", line
    assert words[1:5] == ["--standalone", "--nproc_per_node=2", "-m", "saln_exp.train"], line
    resumed = in_a_shell(line, cwd=tmp_path, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_metrics(_metrics(tmp_path / "whole"), _metrics(run_dir), rel=0.0, abs_=0.0)
