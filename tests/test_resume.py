"""Resume: a killed run continues from its last checkpoint and ends with the metrics an
uninterrupted run produces (time keys aside); damaged checkpoints and changed configs are caught."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, TIME_KEYS
from saln_exp.train import run
from saln_exp.trainer import Trainer
from wandb_records import history, run_info

SMALL = ("model=fcnet", "model.hidden=32", "dataset.image_size=8", "dataset.batch_size=32")


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def interrupt_at_step(monkeypatch, step: int) -> None:
    """Make the run die (like a kill) when it reaches optimizer step `step`."""
    real = Trainer.train_step

    def dying(self, batch):
        if self.progress.steps == step:
            raise KeyboardInterrupt("simulated kill")
        real(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dying)


def test_resume_from_a_mid_epoch_checkpoint_matches_an_uninterrupted_run(
    make_cfg, tmp_path, monkeypatch
):
    overrides = (*SMALL, "selector=uniform", "selector.filter_ratio=0.5", "trainer.epochs=3",
                 "trainer.checkpoint_every_steps=7")  # fmt: skip
    straight = make_cfg(*overrides)
    straight.paths.output_dir = str(tmp_path / "straight")
    run(straight)

    interrupt_at_step(monkeypatch, 60)  # in epoch 2 of 3 (43 candidate batches per epoch)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*overrides))
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert len(metrics(tmp_path / "run")) == 1
    monkeypatch.undo()
    run(make_cfg(*overrides))
    assert metrics(tmp_path / "run") == metrics(tmp_path / "straight")


def straight_run(make_cfg, tmp_path, overrides) -> list[dict]:
    """The uninterrupted run a resumed one must reproduce; its metrics."""
    straight = make_cfg(*overrides)
    straight.paths.output_dir = str(tmp_path / "straight")
    run(straight)
    return metrics(tmp_path / "straight")


def killed_at_step_then_rerun(make_cfg, tmp_path, monkeypatch, overrides, step) -> list[dict]:
    interrupt_at_step(monkeypatch, step)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*overrides))
    monkeypatch.undo()
    run(make_cfg(*overrides))
    return metrics(tmp_path / "run")


@pytest.mark.parametrize(
    "variant",
    [(), ("selector.batchwise=true", "selector.accumulate=true")],  # ASSIST Alg. 8; Alg. 8 + 10
    ids=["epochwise", "epoch_batch_accumulated"],
)
def test_epochwise_filtering_resumed_mid_epoch_logs_the_epochs_own_kept_fraction(
    make_cfg, tmp_path, monkeypatch, variant
):
    """The epoch's filtered set comes from the checkpointed order; its kept fraction (the
    selector's, `select/epoch_kept_frac`) must come from the checkpoint too, not restart at 1."""
    overrides = (*SMALL, "selector=accuracy_epoch", *variant, "trainer.epochs=3",
                 "trainer.checkpoint_every_steps=2")  # fmt: skip
    straight = straight_run(make_cfg, tmp_path, overrides)
    steps = [r["optim/steps"] for r in straight]
    assert steps[1] - steps[0] >= 4  # room for a checkpoint inside epoch 2
    middle_of_epoch_2 = steps[0] + (steps[1] - steps[0]) // 2 + 1
    assert (
        killed_at_step_then_rerun(make_cfg, tmp_path, monkeypatch, overrides, middle_of_epoch_2)
        == straight
    )


def test_accumulation_buffer_and_forgetting_counts_survive_a_resume(
    make_cfg, tmp_path, monkeypatch
):
    overrides = (*SMALL, "selector=accuracy", "trainer.epochs=3",
                 "trainer.checkpoint_every_steps=3")  # fmt: skip
    straight = straight_run(make_cfg, tmp_path, overrides)
    assert killed_at_step_then_rerun(make_cfg, tmp_path, monkeypatch, overrides, 20) == straight


def test_a_truncated_checkpoint_is_reported_and_the_previous_one_used(make_cfg, tmp_path, caplog):
    run(make_cfg(*SMALL, "trainer.epochs=2"))
    latest = tmp_path / "run" / "checkpoint.pt"
    assert (tmp_path / "run" / "checkpoint.prev.pt").exists()
    latest.write_bytes(latest.read_bytes()[:1000])  # a write cut short
    run(make_cfg(*SMALL, "trainer.epochs=3"))  # extending a finished run is allowed
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    straight = make_cfg(*SMALL, "trainer.epochs=3")
    straight.paths.output_dir = str(tmp_path / "straight")
    run(straight)
    assert metrics(tmp_path / "run") == metrics(tmp_path / "straight")


def test_resuming_with_another_configuration_is_refused(make_cfg, tmp_path, capsys):
    run(make_cfg(*SMALL, "trainer.epochs=1"))
    with pytest.raises(SystemExit) as exit_info:
        run(make_cfg(*SMALL, "trainer.epochs=2", "optimizer.lr=0.02"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "another configuration" in err and "optimizer.lr" in err and "hydra.run.dir" in err


def test_resume_dir_override_continues_that_run(make_cfg, tmp_path, monkeypatch):
    interrupt_at_step(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*SMALL, "trainer.epochs=2"))
    monkeypatch.undo()
    cfg = make_cfg(*SMALL, "trainer.epochs=2", f"+resume={tmp_path / 'run'}")
    cfg.paths.output_dir = str(tmp_path / "elsewhere")
    run(cfg)
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_a_resumed_wandb_run_keeps_its_id(make_cfg, tmp_path, monkeypatch):
    overrides = (*SMALL, "trainer.epochs=2", "logger=wandb", "logger.mode=offline")
    interrupt_at_step(monkeypatch, 60)  # in epoch 2
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*overrides))
    monkeypatch.undo()
    time.sleep(1.1)  # offline run folders are named by the second they start in
    run(make_cfg(*overrides))
    files = sorted((tmp_path / "run" / "wandb").rglob("run-*.wandb"))
    assert len(files) == 2
    assert run_info(files[0])["id"] == run_info(files[1])["id"]
    epochs = [[r["epoch"] for r in history(f) if "test/acc" in r] for f in files]
    assert epochs == [[1], [2]]  # continues, no duplicated epochs


@pytest.mark.slow
def test_kill_9_in_the_middle_of_an_epoch_then_rerun_the_same_command(tmp_path):
    """The real thing: SIGKILL a CLI run during epoch 3, run the same command again."""
    args = [str(BIN / "saln-train"), "logger=none", "trainer.progress=false", "dataset.batch_size=16",
            "trainer.epochs=4", "selector=saln", "selector.filter_ratio=0.5"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    straight = subprocess.run(
        [*args, f"hydra.run.dir={tmp_path}/straight"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [*args, f"hydra.run.dir={run_dir}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        lines = (
            (run_dir / "metrics.jsonl").read_text().splitlines()
            if (run_dir / "metrics.jsonl").exists()
            else []
        )
        if len(lines) >= 2:
            break
        time.sleep(0.02)
    time.sleep(0.15)  # into epoch 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "the kill came too late to test anything"
    again = subprocess.run(
        [*args, f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert metrics(run_dir) == metrics(tmp_path / "straight")
    assert sys.executable  # the same interpreter ran all three
