"""Nothing lost, one clear line: a run directory owned by one process, refused before anything is
written when its files belong to another run, writes that fail cleanly (full disk, read-only,
removed directory), signals that stop a run resumably, damaged inputs named as damaged, typos in
`+key` overrides refused by name, thread counts set per job."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from test_data import no_cifar_md5, write_cifar, write_mnist, write_pets  # noqa: F401

from conftest import BIN, TIME_KEYS, printed_command, run_cli
from saln_exp import rundir
from saln_exp.checkpoint import Checkpoints
from saln_exp.config import validate
from saln_exp.data import build_data
from saln_exp.errors import ConfigError, DataCorruptError
from saln_exp.train import run, set_threads
from saln_exp.trainer import Trainer

SMALL = ("model=fcnet", "model.hidden=32", "dataset.image_size=8", "dataset.batch_size=32",
         "selector=uniform", "selector.filter_ratio=0.5")  # fmt: skip


def metrics(run_dir: Path) -> list[dict]:
    rows = rundir.read_jsonl(run_dir / rundir.METRICS)
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def refused(capsys, fn, *args) -> str:
    """Run `fn`, expect exit status 2, return the error line it printed."""
    with pytest.raises(SystemExit) as exit_info:
        fn(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------ refused before anything is written


def test_a_resume_with_another_config_is_refused_before_any_file_changes(
    make_cfg, tmp_path, capsys, monkeypatch
):
    run(make_cfg(*SMALL, "trainer.epochs=1"))
    before = snapshot(tmp_path / "run")
    started = []
    monkeypatch.setattr("saln_exp.tracking.WandbRun.start", lambda *a, **k: started.append(a))
    err = refused(
        capsys, run, make_cfg(*SMALL, "trainer.epochs=1", "optimizer.lr=0.5", "logger=wandb")
    )
    assert "optimizer.lr" in err
    assert snapshot(tmp_path / "run") == before  # config.yaml, status.json, summary.json untouched
    assert json.loads(before[rundir.STATUS])["status"] == "completed"
    assert started == []  # W&B was never touched, so its run is not marked failed


def test_a_finished_run_without_checkpoints_is_not_overwritten(make_cfg, tmp_path, capsys):
    overrides = (*SMALL, "trainer.checkpoint=false")
    run(make_cfg(*overrides, "trainer.epochs=1"))
    before = snapshot(tmp_path / "run")
    err = refused(capsys, run, make_cfg(*overrides, "trainer.epochs=2"))  # nothing to continue from
    assert "no checkpoint" in err and str(tmp_path / "run") in err
    assert snapshot(tmp_path / "run") == before


def test_a_continued_run_never_shows_the_summary_of_the_shorter_one(
    make_cfg, tmp_path, monkeypatch
):
    run(make_cfg(*SMALL, "trainer.epochs=1"))
    real = Trainer.train_step

    def dying(self, batch):
        if self.progress.epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        real(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*SMALL, "trainer.epochs=2"))  # continues the finished 1-epoch run
    assert not (tmp_path / "run" / rundir.SUMMARY).exists()
    assert rundir.read_json(tmp_path / "run" / rundir.STATUS)["status"] == "interrupted"


def test_a_second_process_in_the_same_run_directory_is_refused(make_cfg, tmp_path, capsys):
    cfg = make_cfg(*SMALL, "trainer.epochs=1")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    with FileLock(run_dir / rundir.LOCK).acquire(timeout=0):  # another owner (flock: per open file)
        err = refused(capsys, run, cfg)
    assert "another saln-train process" in err and str(run_dir) in err
    assert not (run_dir / rundir.STATUS).exists()  # the owner's files are not touched
    run(cfg)  # once the owner is gone the run goes ahead
    assert rundir.read_json(run_dir / rundir.STATUS)["status"] == "completed"


def test_temporaries_of_killed_writers_are_removed_and_never_shared(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL, "trainer.epochs=1")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    stale = run_dir / ".checkpoint.pt.999999.tmp"
    stale.write_bytes(b"half a checkpoint")
    run(cfg)
    assert not stale.exists()
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


# ------------------------------------------------------------------ writes that fail


def _failing_checkpoint_save(monkeypatch, fail_on_call: int, err: Exception) -> None:
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "progress" in obj:  # a checkpoint, not another artifact
            calls.append(1)
            if len(calls) == fail_on_call:
                Path(f).write_bytes(b"partial")  # the disk filled up half way through
                raise err
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize(
    "err",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EROFS, "Read-only file system"),
        # what torch.save raises when the disk fills up under it: not an OSError
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
    ],
    ids=["disk-full", "read-only", "torch-save-disk-full"],
)
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_loses_nothing(
    make_cfg, tmp_path, capsys, monkeypatch, err
):
    overrides = (*SMALL, "trainer.epochs=3")
    straight = make_cfg(*overrides)
    straight.paths.output_dir = str(tmp_path / "straight")
    run(straight)

    _failing_checkpoint_save(monkeypatch, fail_on_call=2, err=err)
    line = refused(capsys, run, make_cfg(*overrides))
    run_dir = tmp_path / "run"
    reason = err.strerror if isinstance(err, OSError) else "unexpected pos 576 vs 534"
    assert str(run_dir / rundir.CHECKPOINT) in line and reason in line
    assert not list(run_dir.glob(".*.tmp"))
    assert Checkpoints(run_dir).load()["progress"]["epoch"] == 1  # the previous one is intact
    assert rundir.read_json(run_dir / rundir.STATUS)["status"] == "failed"
    monkeypatch.undo()
    run(make_cfg(*overrides))  # space again: the same command resumes
    assert metrics(run_dir) == metrics(tmp_path / "straight")


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MiB tmpfs: a disk that really fills up (needs the right to mount, else skipped)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # torch may still hold a file


def test_a_checkpoint_on_a_full_disk_is_one_line_and_the_previous_one_survives(tiny_filesystem):
    checkpoints = Checkpoints(tiny_filesystem)
    checkpoints.save({"progress": {"epoch": 1}, "weights": torch.zeros(1000)})
    filler = tiny_filesystem / "filler"
    with filler.open("wb") as fh, contextlib.suppress(OSError):  # fill the disk...
        fh.write(b"\0" * (1 << 20))
    # ...and free its last 16 KiB: room for a small file, not for the next checkpoint
    filler.write_bytes(filler.read_bytes()[: -(16 << 10)])
    with pytest.raises(rundir.RunDirWriteError) as err:
        checkpoints.save({"progress": {"epoch": 2}, "weights": torch.zeros(100_000)})
    line = str(err.value)
    assert line.startswith(f"cannot write {tiny_filesystem / rundir.CHECKPOINT}: No space left")
    assert "\n" not in line
    assert not list(tiny_filesystem.glob(".*.tmp"))
    assert checkpoints.load()["progress"]["epoch"] == 1


def test_a_run_directory_removed_under_a_running_job_is_one_line(
    make_cfg, tmp_path, capsys, monkeypatch
):
    real = Trainer.end_epoch

    def end_epoch_then_vanish(self):
        real(self)
        shutil.rmtree(self.run_dir)

    monkeypatch.setattr(Trainer, "end_epoch", end_epoch_then_vanish)
    line = refused(capsys, run, make_cfg(*SMALL, "trainer.epochs=2"))
    assert "cannot write" in line and str(tmp_path / "run") in line


def test_a_run_directory_that_cannot_be_created_is_one_line(make_cfg, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a directory")
    cfg = make_cfg(*SMALL, "trainer.epochs=1")
    cfg.paths.output_dir = str(tmp_path / "afile" / "run")
    line = refused(capsys, run, cfg)
    assert "cannot create the run directory" in line and "afile" in line


def test_a_hydra_run_or_sweep_dir_that_cannot_be_created_is_one_line_exit_2(tmp_path):
    """Hydra creates these directories before saln-exp's code runs: a path under a file (what a
    read-only filesystem does to root, who ignores permissions) is one line, not its traceback."""
    (tmp_path / "afile").write_text("not a directory")
    for option, what in (("hydra.run.dir", "run"), ("hydra.sweep.dir", "sweep")):
        target = tmp_path / "afile" / what
        proc = run_cli(*(["-m", "seed=0,1"] if what == "sweep" else []), "logger=none",
                       "smoke=true", f"{option}={target}")  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip() == (
            f"error: cannot create the {what} directory {target}: Not a directory"
        ), proc.stderr[-3000:]
    # the directory made before Hydra's is the one the run uses: one directory per run
    proc = run_cli("logger=none", "smoke=true", "trainer.progress=false",
                   f"paths.log_dir={tmp_path / 'logs'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "runs").glob("*/*")
    assert (run_dir / rundir.SUMMARY).exists()


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_lost_run(make_cfg, tmp_path, caplog):
    (tmp_path / "afile").write_text("not a directory")
    cfg = make_cfg(*SMALL, "selector=rho", "selector.reference.epochs=1", "trainer.epochs=1",
                   "dataset.val_fraction=0.2")  # fmt: skip
    cfg.paths.cache_dir = str(tmp_path / "afile" / "cache")  # any write under it fails
    run(cfg)
    assert rundir.read_json(tmp_path / "run" / rundir.STATUS)["status"] == "completed"
    assert "reference model not cached" in caplog.text


# ------------------------------------------------------------------ signals


# Long enough that the signal, sent early in epoch 2, always lands while the run trains: with 4
# epochs of this model a fast machine finished the run before the signal arrived (killed, -15).
SIGNALLED_EPOCHS = 40


def _cli_args(run_dir: Path) -> list[str]:
    return [str(BIN / "saln-train"), "logger=none", "trainer.progress=false", *SMALL,
            f"trainer.epochs={SIGNALLED_EPOCHS}", f"hydra.run.dir={run_dir}"]  # fmt: skip


def _wait_for_epochs(path: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {n} epochs")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT])
def test_a_signal_stops_the_run_with_a_checkpoint_and_one_line(tmp_path, signum):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("SLURM_JOB_ID", None)
    straight = subprocess.run(
        _cli_args(tmp_path / "straight"), env=env, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(
        _cli_args(run_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_epochs(run_dir / rundir.METRICS, 1, proc)
    time.sleep(0.1)  # into epoch 2
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    ours = [
        line
        for line in stderr.splitlines()
        if "Traceback" in line or line.startswith("interrupted")
    ]
    assert ours == [next(line for line in stderr.splitlines() if line.startswith("interrupted"))]
    assert signal.Signals(signum).name in ours[0] and "resume" in ours[0]
    assert rundir.read_json(run_dir / rundir.STATUS)["status"] == "interrupted"
    assert not (run_dir / rundir.SUMMARY).exists()

    again = subprocess.run(_cli_args(run_dir), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert metrics(run_dir) == metrics(tmp_path / "straight")


@pytest.mark.slow
def test_a_killed_sweep_still_writes_sweep_json(tmp_path):
    sweep = tmp_path / "sweep"
    args = [str(BIN / "saln-train"), "-m", "logger=none", "trainer.progress=false", *SMALL,
            f"trainer.epochs={SIGNALLED_EPOCHS}", "seed=0,1", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = subprocess.Popen(args, env={**os.environ, "WANDB_MODE": "disabled"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_epochs(sweep / "0" / rundir.METRICS, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    record = json.loads((sweep / rundir.SWEEP).read_text())
    assert [(j["dir"], j["status"]) for j in record["jobs"]] == [("0", "interrupted")]
    assert shlex.split(printed_command(stderr))[1:] == args[1:]  # the sweep, its directory pinned


def test_hydra_sweep_dir_latest_resumes_the_newest_sweep(tmp_path):
    sweeps = tmp_path / "sweeps"
    common = ["-m", *SMALL, "trainer.epochs=1", "seed=0"]
    first = run_cli(*common, f"hydra.sweep.dir={sweeps}/first")
    assert first.returncode == 0, first.stderr[-2000:]
    assert os.readlink(sweeps / "latest") == "first"
    again = run_cli(*common, f"hydra.sweep.dir={sweeps}/latest")
    assert again.returncode == 0, again.stderr[-2000:]
    assert os.readlink(sweeps / "latest") == "first"
    assert json.loads((sweeps / "first" / rundir.SWEEP).read_text())["n_jobs"] == 1
    missing = run_cli(*common, f"hydra.sweep.dir={tmp_path}/nothing/latest")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: hydra.sweep.dir=")


# ------------------------------------------------------------------ damaged inputs


@pytest.mark.parametrize("damage", ["random-bytes", "truncated"])
def test_damaged_mnist_files_are_called_corrupt(make_cfg, damage):
    cfg = make_cfg("dataset=mnist")
    write_mnist(Path(cfg.paths.data_dir))
    images = Path(cfg.paths.data_dir) / "MNIST" / "raw" / "train-images-idx3-ubyte"
    if damage == "random-bytes":
        images.write_bytes(os.urandom(images.stat().st_size))
    else:
        images.write_bytes(images.read_bytes()[:100])
    with pytest.raises(DataCorruptError, match=r"mnist files in .* are corrupt or truncated"):
        build_data(cfg.dataset, cfg.paths)


def test_garbage_cifar_pickles_are_called_corrupt(make_cfg):
    cfg = make_cfg("dataset=cifar10")
    write_cifar(Path(cfg.paths.data_dir), "cifar10")
    (Path(cfg.paths.data_dir) / "cifar-10-batches-py" / "data_batch_2").write_bytes(os.urandom(500))
    with pytest.raises(DataCorruptError, match=r"cifar10 files in .* are corrupt"):
        build_data(cfg.dataset, cfg.paths)


def test_garbage_cifar_pickles_are_corrupt_even_past_the_checksum(make_cfg, no_cifar_md5):  # noqa: F811
    cfg = make_cfg("dataset=cifar10")
    write_cifar(Path(cfg.paths.data_dir), "cifar10")
    (Path(cfg.paths.data_dir) / "cifar-10-batches-py" / "data_batch_2").write_bytes(os.urandom(500))
    with pytest.raises(DataCorruptError, match="corrupt"):
        build_data(cfg.dataset, cfg.paths)


def test_a_pets_annotation_naming_a_missing_image_names_it(make_cfg):
    cfg = make_cfg("dataset=pets", "dataset.image_size=32")
    write_pets(Path(cfg.paths.data_dir))
    victim = sorted((Path(cfg.paths.data_dir) / "oxford-iiit-pet" / "images").glob("*.jpg"))[0]
    victim.unlink()
    with pytest.raises(DataCorruptError, match=victim.name):
        build_data(cfg.dataset, cfg.paths)


def test_an_empty_status_json_does_not_stop_a_run_or_a_sweep_summary(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL, "trainer.epochs=1")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    (run_dir / rundir.STATUS).write_text("")
    run(cfg)
    assert rundir.read_json(run_dir / rundir.STATUS)["status"] == "completed"
    from saln_exp.sweep import collect_jobs

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / rundir.STATUS).write_text("")
    assert {j["status"] for j in collect_jobs(tmp_path)} == {"completed", None}


def test_a_half_written_metrics_line_is_skipped_with_a_note(make_cfg, tmp_path, caplog):
    from saln_exp.report.load import load_runs

    run(make_cfg(*SMALL, "trainer.epochs=2"))
    path = tmp_path / "run" / rundir.METRICS
    with path.open("a") as fh:
        fh.write('{"epoch": 3, "test/acc": 0.')  # killed mid-write
    runs = load_runs([tmp_path / "run"])
    assert sorted(runs.curves["epoch"]) == [1, 2]
    assert "line 3 is not complete JSON" in caplog.text


# ------------------------------------------------------------------ typos in +key overrides


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("+trainer.epoch=3", "trainer.epochs"),
        ("+dataset.augmnt=true", "dataset.augment"),
        ("+eval.batchsize=64", "eval.batch_size"),
        ("+model.hiden=10", "model.hidden"),
        ("+optimizer.lrr=0.1", "optimizer.lr"),
        ("+scheduler.gama=0.5", "scheduler.gamma"),
    ],
)
def test_an_unknown_plus_key_is_refused_with_the_closest_one(make_cfg, override, suggestion):
    cfg = make_cfg("model=fcnet", "scheduler=exponential", override)
    with pytest.raises(
        ConfigError, match=f"unknown key {override[1:].split('=')[0]}; did you mean {suggestion}"
    ):
        validate(cfg)


def test_an_unknown_plus_key_from_the_command_line_is_one_line_exit_2(tmp_path):
    result = run_cli("+trainer.epoch=3", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: unknown key trainer.epoch; did you mean trainer.epochs?")
    )
    assert not (tmp_path / "run" / rundir.SUMMARY).exists()


# ------------------------------------------------------------------ threads


def test_threads_come_from_the_config_then_the_scheduler(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert set_threads(1) == (1, "trainer.threads")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(None) == (1, "OMP_NUM_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
        assert set_threads(None) == (2, "SLURM_CPUS_PER_TASK")
        monkeypatch.delenv("SLURM_CPUS_PER_TASK")
        monkeypatch.setenv("SALN_CPUS_PER_TASK", "1")
        assert set_threads(None) == (1, "the launcher's cpus_per_task")
        monkeypatch.delenv("SALN_CPUS_PER_TASK")
        assert set_threads(None)[0] == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def test_the_run_log_says_how_many_threads(tmp_path):
    result = run_cli(
        *SMALL, "trainer.epochs=1", "trainer.threads=1", f"hydra.run.dir={tmp_path}/run"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 torch thread(s) (trainer.threads)" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("weights", ["../../../tmp/evil", "IMAGENET9K_V9"])
def test_backbone_weights_that_are_not_a_known_name_are_refused_at_start(make_cfg, capsys, weights):
    cfg = make_cfg(*SMALL[:4], "selector=saln", "selector.features=pretrained",
                   f"selector.backbone_weights={weights}", "trainer.epochs=1")  # fmt: skip
    line = refused(capsys, run, cfg)
    assert "selector.backbone_weights must be one of" in line and "IMAGENET1K_V1" in line


@pytest.mark.parametrize("damage", ["random-bytes", "truncated"])
def test_a_damaged_reference_checkpoint_is_one_line(make_cfg, tmp_path, capsys, damage):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    bad = tmp_path / "reference.pt"
    bad.write_bytes(os.urandom(300) if damage == "random-bytes" else good.read_bytes()[:40])
    cfg = make_cfg(
        *SMALL[:4], "selector=rho", f"selector.reference.checkpoint={bad}", "trainer.epochs=1"
    )
    line = refused(capsys, run, cfg)
    assert f"selector.reference.checkpoint {bad} is not a state_dict" in line


@pytest.mark.parametrize("damage", ["random-bytes", "truncated"])
def test_a_damaged_reference_cache_is_retrained_with_a_warning(make_cfg, tmp_path, caplog, damage):
    overrides = (*SMALL[:4], "selector=rho", "selector.reference.epochs=1", "trainer.epochs=1")
    run(make_cfg(*overrides))
    (cached,) = (tmp_path / "cache" / "reference").glob("*.pt")
    cached.write_bytes(os.urandom(300) if damage == "random-bytes" else cached.read_bytes()[:40])
    shutil.rmtree(tmp_path / "run")
    run(make_cfg(*overrides))
    assert "reference model cache" in caplog.text and "unreadable" in caplog.text
    assert rundir.read_json(tmp_path / "run" / rundir.STATUS)["status"] == "completed"


def test_a_log_file_gets_no_progress_bar_frames(tmp_path):
    """stderr redirected to a file (nohup, a Slurm job's output): one line per epoch, no \\r."""
    log = tmp_path / "job.out"
    with log.open("w") as fh:
        result = subprocess.run(
            [str(BIN / "saln-train"), "logger=none", *SMALL, "trainer.epochs=2", "trainer.progress=true",
             f"hydra.run.dir={tmp_path}/run"],
            stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "disabled"},
        )  # fmt: skip
    text = log.read_text()
    assert result.returncode == 0, text[-2000:]
    assert "\r" not in text
    assert len([line for line in text.splitlines() if " - epoch " in line]) == 2
