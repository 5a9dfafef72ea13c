"""Resume: a killed run continues from its last checkpoint and ends with the metrics an
uninterrupted run produces (time keys aside); damaged checkpoints and changed configs are caught."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import BIN, TIME_KEYS, in_a_shell, printed_command
from saln_exp import resume
from saln_exp.resume import RUN_DIR, hydra_value
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
    assert status["status"] == "interrupted" and status["resume"]  # the command, until it completes
    assert len(metrics(tmp_path / "run")) == 1
    monkeypatch.undo()
    run(make_cfg(*overrides))
    assert metrics(tmp_path / "run") == metrics(tmp_path / "straight")
    assert "resume" not in json.loads((tmp_path / "run" / "status.json").read_text())


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


@pytest.mark.parametrize("checkpoints", ["true", "false"])
def test_a_completed_run_rerun_with_the_same_settings_is_skipped(
    make_cfg, tmp_path, monkeypatch, checkpoints
):
    """What a resumed sweep does with its finished jobs: nothing is trained, written or sent to
    W&B; the run's own result is returned. (More epochs continue it: see the test above.)"""
    overrides = (*SMALL, "trainer.epochs=1", f"trainer.checkpoint={checkpoints}")
    value = run(make_cfg(*overrides))
    run_dir = tmp_path / "run"
    before = {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()
    }
    started = []
    monkeypatch.setattr("saln_exp.tracking.WandbRun.start", lambda *a, **k: started.append(a))
    again = run(make_cfg(*overrides, "logger=wandb"))
    assert again == value
    after = {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()
    }
    assert after == before
    assert started == []


def written_by_an_older_version(run_dir: Path, *added_since: str) -> None:
    """Make a run directory look as an older saln-exp left it: its configs (the checkpoints'
    and config.yaml) without keys added to conf/ since."""

    def drop(config: dict) -> dict:
        for dotted in added_since:
            *parents, key = dotted.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            del node[key]
        return config

    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        if (run_dir / name).exists():
            state = torch.load(run_dir / name, weights_only=True)
            torch.save({**state, "config": drop(state["config"])}, run_dir / name)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump(drop(config)))


def test_a_run_of_an_older_version_resumes_when_the_new_keys_keep_its_behaviour(
    make_cfg, tmp_path, capsys
):
    added = ("selector.scope", "trainer.dist_timeout_s", "debug_name")
    run(make_cfg(*SMALL, "trainer.epochs=1"))
    written_by_an_older_version(tmp_path / "run", *added)
    run(make_cfg(*SMALL, "trainer.epochs=2"))  # was refused: "differs in selector.scope, ..."
    assert metrics(tmp_path / "run") == straight_run(
        make_cfg, tmp_path, (*SMALL, "trainer.epochs=2")
    )

    older = make_cfg(*SMALL, "trainer.epochs=1")
    older.paths.output_dir = str(tmp_path / "older")
    run(older)
    written_by_an_older_version(tmp_path / "older", *added)
    newer = make_cfg(*SMALL, "trainer.epochs=2", "selector.scope=local")  # not how it ran
    newer.paths.output_dir = str(tmp_path / "older")
    with pytest.raises(SystemExit) as exit_info:
        run(newer)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'older'} holds a run of an older version of saln-exp, whose config "
        "has no selector.scope; resume it with selector.scope=global, or choose a new "
        "hydra.run.dir"
    )


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


# a CLI run long enough to be stopped after its first checkpoint: lenet, 3 epochs of digits
CLI = ("logger=none", "trainer.progress=false", "dataset.batch_size=16",
       "trainer.checkpoint_every_steps=10")  # fmt: skip


def interrupted_cli(args: list[str], checkpoint_glob: str, out: Path) -> str:
    """`saln-train args` with its outputs under `out` (the default, time-named directories),
    SIGINT once a checkpoint matches `checkpoint_glob`; its stderr."""
    env = {**os.environ, "WANDB_MODE": "disabled", "SALN_LOG_DIR": str(out),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    proc = subprocess.Popen(
        ["saln-train", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not list(out.glob(checkpoint_glob)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    return err


@pytest.mark.slow
def test_an_interrupted_run_resumes_with_the_command_it_prints(tmp_path):
    """Ctrl-C a run in its default (time-named) directory, paste what it printed: the same
    directory continues to the uninterrupted metrics, and no second run directory appears."""
    args = [*CLI, "trainer.epochs=3"]
    straight = in_a_shell(
        f"saln-train {' '.join(args)} hydra.run.dir={tmp_path}/straight", tmp_path
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "out"
    err = interrupted_cli(args, "runs/*/*/checkpoint.pt", out)
    (run_dir,) = out.glob("runs/*/*")
    assert not (run_dir / "summary.json").exists(), "the signal came too late to test anything"
    line = printed_command(err)
    assert (
        line.startswith("saln-train ")
        and json.loads((run_dir / "status.json").read_text())["resume"] == line
    )  # also there for whoever lost the terminal

    resumed = in_a_shell(line, cwd=tmp_path, env={"SALN_LOG_DIR": str(out)})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert list(out.glob("runs/*/*")) == [run_dir]
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert metrics(run_dir) == metrics(tmp_path / "straight")


def job_results(sweep_dir: Path) -> list[tuple]:
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    return [(j["dir"], j["status"], j["overrides"], j.get("metric"), j.get("value")) for j in jobs]


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_with_the_command_it_prints(tmp_path):
    """Ctrl-C a sweep in its second job, paste what it printed: the completed job is skipped
    (its files untouched), the second continues, and the sweep's results are those of an
    uninterrupted sweep, in the same sweep directory."""
    args = ["-m", *CLI, "trainer.epochs=2", "seed=0,1"]
    straight = in_a_shell(
        f"saln-train {' '.join(args)} hydra.sweep.dir={tmp_path}/straight", tmp_path,
        env={"SALN_LOG_DIR": str(tmp_path / "elsewhere")},
    )  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "out"
    err = interrupted_cli(args, "sweeps/2*/1/checkpoint.pt", out)
    (sweep_dir,) = out.glob("sweeps/2*")
    assert not (sweep_dir / "1" / "summary.json").exists(), "the signal came too late"
    first_job = {f: (sweep_dir / "0" / f).stat().st_mtime_ns
                 for f in ("summary.json", "status.json", "metrics.jsonl", "checkpoint.pt")}  # fmt: skip

    resumed = in_a_shell(printed_command(err), cwd=tmp_path, env={"SALN_LOG_DIR": str(out)})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(p.name for p in (out / "sweeps").iterdir()) == [sweep_dir.name, "latest"]
    assert {f: (sweep_dir / "0" / f).stat().st_mtime_ns for f in first_job} == first_job
    assert "already completed" in (sweep_dir / "0" / "train.log").read_text()
    assert "resumed from" in (sweep_dir / "1" / "train.log").read_text()
    assert job_results(sweep_dir) == job_results(tmp_path / "straight")
    for job in ("0", "1"):
        assert metrics(sweep_dir / job) == metrics(tmp_path / "straight" / job), job


@pytest.mark.parametrize(
    "path",
    ["/data/my runs/a", "/data/a,b", "/data/it's", "/data/(x)=[y]", "/data/~ü", "/d/a\\'b\\"],
)
def test_the_pinned_directory_reaches_hydra_unchanged_through_a_shell(path):
    """Oracle: the shell's own word splitting, then Hydra's override parser."""
    word = f"{RUN_DIR}={hydra_value(path)}"
    (parsed,) = shlex.split(shlex.join([word]))
    override = OverridesParser.create().parse_override(parsed)
    assert not override.is_sweep_override() and override.value() == path


def test_the_command_is_the_one_typed_with_its_directory_pinned(monkeypatch, tmp_path):
    typed = ["-cn", "config", "model=fcnet", "tags=[a, b]", "resume=/old", "hydra.run.dir=/x"]
    monkeypatch.setattr(resume, "_command_line", lambda: typed)
    command, nodes = resume.run_command(tmp_path / "run")
    assert shlex.split(command)[1:] == [*typed[:4], f"hydra.run.dir={tmp_path / 'run'}"]
    assert nodes == 1
    swept = shlex.split(
        resume.sweep_command(tmp_path / "sweep", ["-m", "seed=0,1", "hydra.sweep.dir=/y"])
    )
    assert swept[1:] == ["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]


@pytest.mark.parametrize(("world", "per_node"), [(2, 2), (8, 4)])
def test_under_torchrun_the_command_starts_torchrun(monkeypatch, tmp_path, world, per_node):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node))
    monkeypatch.setattr(resume, "_command_line", lambda: ["model=fcnet"])
    command, nodes = resume.run_command(tmp_path)
    nodes_flag = "--standalone" if world == per_node else f"--nnodes={world // per_node}"
    words = shlex.split(command)
    start = words.index(nodes_flag)
    assert words[start:] == [
        nodes_flag, f"--nproc_per_node={per_node}", "-m", "saln_exp.train", "model=fcnet",
        f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    # torchrun, or where this environment has no torchrun script, the module it runs
    assert " ".join(words[:start]).endswith(("torchrun", "-m torch.distributed.run"))
    advice = resume.how_to_resume(tmp_path)
    assert advice.endswith(f"run:\n{command}")
    assert ("on each of its 2 nodes" in advice) == (nodes == 2)


def test_a_checkpoint_written_before_the_selection_api_resumes(make_cfg, tmp_path, monkeypatch):
    """Checkpoints from before the trainer ran on the selection API kept the selector's state,
    the staged samples and the epoch order's stream under keys of their own (`selector`,
    `accumulator`, `rng["data"]`); such a run still resumes to the uninterrupted numbers."""
    overrides = (*SMALL, "selector=accuracy", "trainer.epochs=3",
                 "trainer.checkpoint_every_steps=3")  # fmt: skip
    straight = straight_run(make_cfg, tmp_path, overrides)
    interrupt_at_step(monkeypatch, 20)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*overrides))
    monkeypatch.undo()
    for path in (tmp_path / "run").glob("checkpoint*.pt"):  # as the older trainer wrote them
        state = torch.load(path, weights_only=True)
        selection = state.pop("selection")
        state["selector"], state["accumulator"] = selection["selector"], selection["accumulator"]
        state["rng"]["data"] = selection["order"]
        torch.save(state, path)
    run(make_cfg(*overrides))
    assert metrics(tmp_path / "run") == straight
