"""What `saln-train` runs (saln_exp.cli checks the command line, then its Hydra app calls `run`):

validate -> seed -> build data, model, selector -> fit -> write summary -> return the metric.
A user error (bad value, missing data) prints one line and exits 2. In a multirun a failing job
is recorded as failed and returns NaN, so the other jobs still run; the sweep callback then lists
the failures and makes the sweep exit non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from saln_exp import distributed, rng, selection
from saln_exp.checkpoint import Checkpoints, check_same_run, differences
from saln_exp.cli import main  # `python -m saln_exp.train` (torchrun) is the same command
from saln_exp.config import loop_settings, plain, prune_job, resolve_device, validate
from saln_exp.console import print_run_summary
from saln_exp.data import build_data, shape_of
from saln_exp.data.stream import worker_deaths_reported
from saln_exp.errors import ConfigError, UserError
from saln_exp.metrics import summarize
from saln_exp.models import build_model
from saln_exp.prune import prune_dataset
from saln_exp.prune import shrink_for_smoke as shrink_pruning_for_smoke
from saln_exp.resume import how_to_resume, resume_command
from saln_exp.rundir import CHECKPOINT, METRICS, STATUS, SUMMARY, RunDirBusyError, RunFiles
from saln_exp.selectors import selector_class
from saln_exp.stop import Interrupted, stop_on_signals
from saln_exp.sweep import CPUS_PER_TASK_ENV, Runtime, hydra_runtime, write_sweep_json
from saln_exp.tracking import Tracking, git_commit
from saln_exp.trainer import Trainer, autocast_factory

log = logging.getLogger("saln_exp")


def seed_everything(cfg: DictConfig) -> int:
    """Seed python, numpy and torch. `seed: null` draws one and writes it into the config."""
    seed = cfg.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") % (2**31)
        with open_dict(cfg):
            cfg.seed = seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if cfg.get("deterministic", True):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = bool(cfg.trainer.get("cudnn_benchmark", True))
    return seed


def apply_smoke(cfg: DictConfig) -> None:
    """`smoke=true`: the same experiment on a synthetic stand-in of the same shape, a few steps.
    The selector and the pruner shrink their own options (side models, downloads)."""
    if not cfg.get("smoke"):
        return
    channels, size, classes = shape_of(plain(cfg.dataset), str(cfg.paths.data_dir))
    with open_dict(cfg):
        stand_in = {  # the real dataset's channels and classes, at most 32x32 (resnet18_imagenet's minimum)
            "name": "synthetic", "like": None, "n_train": 96, "n_test": 48, "noise": 1.0,
            "channels": channels, "image_size": min(size, 32), "num_classes": classes, "download": False,
            "batch_size": min(int(cfg.dataset.batch_size), 32),
        }  # fmt: skip
        cfg.dataset.merge_with(stand_in)
        cfg.trainer.epochs = min(int(cfg.trainer.epochs), 2)
        cfg.eval.batch_size = 64
        if cfg.model.get("pretrained"):  # no weights offline: the architecture is what is tested
            cfg.model.pretrained = False
        selector, prune = plain(cfg.selector), plain(cfg.prune)
        selector_class(selector["name"]).shrink_for_smoke(selector)
        shrink_pruning_for_smoke(prune)
        cfg.selector, cfg.prune = selector, prune


@worker_deaths_reported()  # whichever line PyTorch's SIGCHLD handler raises at
def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Build everything from the config and fit; return the run summary. With several processes
    every rank builds the same things; only rank 0 tracks (W&B and the run's files)."""
    world = distributed.WORLD
    validate(cfg)
    seed = seed_everything(cfg)
    device = resolve_device(distributed.device_for(cfg.device, world))
    threads, source = set_threads(cfg.trainer.get("threads"))
    processes = f", rank {world.rank} of {world.size} processes" if world.active else ""
    log.info("run %s: %s + %s + %s on %s, %d torch thread(s) (%s)%s", run_dir, cfg.dataset.name,
             cfg.model.name, cfg.selector.name, device, threads, source, processes)  # fmt: skip
    selector = build_selector(cfg, seed, device)  # option errors surface before data is read
    paths = {"data_dir": str(cfg.paths.data_dir), "cache_dir": str(cfg.paths.cache_dir)}
    with rng.preserved(device):  # reading (or decoding) data moves no random stream
        data = build_data(plain(cfg.dataset), paths, device)
    data, prune_record = prune_dataset(prune_job(cfg), data, device, run_dir)
    model = build_model(plain(cfg.model), data.in_shape, data.num_classes).to(device)
    if cfg.trainer.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    runtime = hydra_runtime()
    settings = loop_settings(cfg)
    if not world.is_main:  # the same training, nothing written
        trainer = Trainer(settings, data, model, selector, run_dir, device, tracking=None)
        trainer.fit()
        return {}
    tracking = Tracking(cfg, run_dir, name=runtime.run_name, group=runtime.group)
    try:
        trainer = Trainer(settings, data, model, selector, run_dir, device, tracking)
        history = trainer.fit()
        summary = {
            "status": "completed",
            "dataset": cfg.dataset.name,
            "model": cfg.model.name,
            "selector": cfg.selector.name,
            "filter_ratio": float(cfg.selector.filter_ratio),
            "seed": seed,
            "experiment": cfg.get("experiment_name"),
            "device": str(device),
            "world_size": world.size,
            "metric": cfg.metric,
            "metric_value": history[-1][cfg.metric],
            "git_commit": git_commit(),
            **summarize(history, cfg.eval.get("target_acc")),
            **trainer.forgetting.summary(data.train.indices),
            **prune_record,
            "config": plain(cfg),
        }
        tracking.log_run_images()
        tracking.complete(summary, final_checkpoint=Checkpoints(run_dir).latest)
        return summary
    except Interrupted as err:
        tracking.fail(err, status="interrupted")
        raise
    except BaseException as err:
        tracking.fail(err)
        raise


def build_selector(cfg: DictConfig, seed: int, device: torch.device) -> selection.BatchSelector:
    """The run's selector through the public selection API, as a loop of your own builds it,
    with the runner's forms of what it prepares before training (`selection.make`): the
    `reference` recipe and pretrained features extracted with its backbone options."""
    options = plain(cfg.selector)
    if options.get("features") == "pretrained":
        options["pretrained_features"] = selection.FROM_BACKBONE
    try:
        return selection.make(
            options.pop("name"), **options, seed=seed, batch_size=int(cfg.dataset.batch_size),
            autocast=autocast_factory(device, str(cfg.trainer.get("precision", "fp32"))),
        )  # fmt: skip
    except ValueError as err:  # a wrong selector option: one line, as for any other key
        raise ConfigError(str(err)) from None


def set_threads(requested: int | None) -> tuple[int, str]:
    """torch's intra-op threads for this job: `trainer.threads`, else OMP_NUM_THREADS, else the
    CPUs the scheduler gave the job, else the CPUs this process may run on. Default torch threads on a shared node, or
    one per job of a parallel sweep, oversubscribe the cores and make small ops many times slower."""
    if requested is not None:
        threads, source = int(requested), "trainer.threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads, source = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    elif os.environ.get("SLURM_CPUS_PER_TASK"):
        threads, source = int(os.environ["SLURM_CPUS_PER_TASK"]), "SLURM_CPUS_PER_TASK"
    elif os.environ.get(CPUS_PER_TASK_ENV):
        threads, source = int(os.environ[CPUS_PER_TASK_ENV]), "the launcher's cpus_per_task"
    else:
        threads, source = len(os.sched_getaffinity(0)), "the CPUs this process may use"
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads(), source


def already_completed(cfg: DictConfig, files: RunFiles) -> dict | None:
    """The summary of this very run when it has already completed in this directory: the same
    configuration and number of epochs (a rerun of a finished job of a sweep, or of a pasted
    resume command). A run with more epochs continues instead; another configuration is refused
    by check_the_directory."""
    summary = files.read_summary()
    saved = summary.get("config")
    if summary.get("status") != "completed" or not isinstance(saved, dict):
        return None
    current = plain(cfg)
    if cfg.seed is None:  # `seed: null` drew one the first time
        current["seed"] = saved.get("seed")
    same_epochs = saved.get("trainer", {}).get("epochs") == current["trainer"]["epochs"]
    return summary if same_epochs and not differences(saved, current) else None


def check_the_directory(cfg: DictConfig, files: RunFiles) -> None:
    """Refuse, before anything is written, a directory whose files belong to another run."""
    checkpoints = Checkpoints(files.dir)
    if checkpoints.exists():
        saved = checkpoints.saved_config() or {}
        if cfg.seed is None:  # `seed: null` drew one the first time; continue with it
            with open_dict(cfg):
                cfg.seed = saved.get("seed")
        check_same_run(saved, plain(cfg), files.dir)
    elif files.holds_results():
        raise ConfigError(
            f"{files.dir} holds the results of an earlier run ({SUMMARY} or {METRICS}) and no "
            "checkpoint to continue it (trainer.checkpoint=false?); choose a new hydra.run.dir, "
            "or delete those files to run it again"
        )
    # a summary describes a finished run: the run continued here writes its own when it ends
    files.summary_path.unlink(missing_ok=True)


def refuse(message: str, multirun: bool) -> float:
    """A user error: one line and exit 2, or in a sweep a logged failure and NaN."""
    if multirun:
        log.error("job failed: %s", message)
        return math.nan
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def stopped(err: Interrupted, files: RunFiles, runtime, started: bool) -> None:
    """Interrupted: status (which keeps the command that resumes the run), that command on a
    line of its own (to paste), sweep.json, and the exit status of the signal."""
    if started:
        files.try_write_status("interrupted", error=err.signal_name, overrides=runtime.overrides)
    checkpointed = Checkpoints(files.dir).exists()
    # stopped before its first checkpoint, the run starts again in its directory
    if checkpointed or not files.holds_results():
        advice = how_to_resume(files.dir, checkpointed)
    else:
        advice = (f"{files.dir} has no checkpoint (trainer.checkpoint=false), so it cannot resume; "
                  f"its epochs so far stay in its {METRICS}")  # fmt: skip
    print(f"interrupted by {err.signal_name}: {advice}", file=sys.stderr)
    if runtime.multirun:
        write_sweep_json(Path(HydraConfig.get().sweep.dir))
    sys.exit(128 + err.signum)


def record_selector_choice(cfg: DictConfig, runtime: Runtime) -> None:
    """Log which conf/selector/ file was chosen (saln_paper and saln share `selector.name`): the
    report fills paper rows by it, through the experiment's `paper_rows`."""
    with open_dict(cfg):
        cfg.selector_choice = (
            runtime.selector_choice or cfg.get("selector_choice") or cfg.selector.name
        )


def run(cfg: DictConfig) -> float:
    """The task wrapper: one process, or one rank of a multi-process training (torchrun, or a
    Slurm job with several tasks): saln_exp.distributed, docs/distributed.md."""
    world = distributed.setup(
        cfg.device, float(cfg.trainer.get("dist_timeout_s") or distributed.DEFAULT_TIMEOUT_S)
    )
    if not world.active:
        return run_one(cfg)
    try:
        value = run_one(cfg) if world.is_main else run_peer(cfg)
        distributed.barrier()
        distributed.teardown()
        return value
    except Exception as err:  # one line naming the rank; torchrun ends the other ranks
        print(distributed.failure_line(world, err), file=sys.stderr)
        sys.exit(1)


def run_peer(cfg: DictConfig) -> float:
    """A rank other than 0: trains in rank 0's run directory once rank 0 has claimed it and
    checked it; writes nothing (logs only warnings)."""
    for handler in logging.getLogger().handlers[:]:
        if isinstance(handler, logging.FileHandler):  # Hydra's log file is rank 0's
            logging.getLogger().removeHandler(handler)
            handler.close()
    logging.getLogger("saln_exp").setLevel(logging.WARNING)
    with contextlib.suppress(UserError):
        apply_smoke(cfg)  # rank 0 reports such an error
    record_selector_choice(cfg, hydra_runtime())
    shared = distributed.broadcast_object(None)
    if shared is None:  # rank 0 found the run already completed: nothing to train
        return math.nan
    run_dir, seed = shared  # type: ignore[misc]
    run_dir = Path(run_dir)
    remove_stray_hydra_dir(Path(cfg.paths.output_dir), run_dir)
    with open_dict(cfg):
        cfg.seed = seed  # `seed: null` is drawn once, by rank 0
    with stop_on_signals():
        try:
            train(cfg, run_dir)
        except Interrupted as err:
            sys.exit(128 + err.signum)
    return math.nan


def remove_stray_hydra_dir(own: Path, run_dir: Path) -> None:
    """Hydra made this rank a directory of its own when the run directory's name holds the
    launch time (the default `hydra.run.dir`) and the ranks started a moment apart: remove it if
    it holds nothing but what Hydra wrote there (.hydra/ and the log file)."""
    if not own.is_dir() or own.resolve() == run_dir.resolve():
        return
    hydra_files = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if {entry.name for entry in own.iterdir()} <= hydra_files:
        shutil.rmtree(own, ignore_errors=True)


def run_one(cfg: DictConfig) -> float:
    """Own the run directory and record the outcome whatever happens."""
    try:
        apply_smoke(cfg)
    except UserError as err:  # a smoke run of a dataset whose shape is unknown
        return refuse(str(err), hydra_runtime().multirun)
    run_dir = Path(cfg.resume) if cfg.get("resume") else Path(cfg.paths.output_dir)
    files = RunFiles(run_dir)
    runtime = hydra_runtime()
    record_selector_choice(cfg, runtime)
    if cfg.get("resume") and not files.holds_a_run():  # a typo must not start a new run there
        return refuse(
            f"resume={cfg.resume} holds no run (no {CHECKPOINT}, {STATUS} or {SUMMARY}); "
            "give the directory of a run to continue",
            runtime.multirun,
        )
    started = False  # nothing is written before the directory is ours and its files are this run's
    try:
        with files.claimed(), stop_on_signals():
            done = already_completed(cfg, files)
            if done is not None:
                if distributed.WORLD.active:
                    distributed.broadcast_object(None)  # the other ranks have nothing to do
                log.info("%s already completed with these settings; skipped (%s)", run_dir, SUMMARY)
                value = done.get("metric_value")
                return math.nan if value is None else float(value)
            check_the_directory(cfg, files)
            files.write_status(
                "running", overrides=runtime.overrides, resume=resume_command(run_dir)[0]
            )
            started = True
            if distributed.WORLD.active:  # the other ranks train here, with this seed
                if cfg.seed is None:
                    with open_dict(cfg):
                        cfg.seed = int.from_bytes(os.urandom(4), "little") % (2**31)
                distributed.broadcast_object((str(run_dir), cfg.seed))
            summary = train(cfg, run_dir)
    except RunDirBusyError as err:  # a second sweep into this directory: the first runs the job
        if runtime.multirun:
            log.warning("job not run here: %s", err)
            return math.nan
        return refuse(str(err), multirun=False)
    except UserError as err:
        if started:
            files.try_write_status("failed", error=str(err), overrides=runtime.overrides)
        return refuse(str(err), runtime.multirun)
    except Interrupted as err:
        stopped(err, files, runtime, started)
    except Exception as err:
        files.try_write_status(
            "failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
            overrides=runtime.overrides,
        )  # fmt: skip
        if runtime.multirun:
            log.exception("job crashed")
            return math.nan
        raise
    except BaseException as err:  # KeyboardInterrupt, SystemExit: resumable, not failed
        if started:
            files.try_write_status(
                "interrupted", error=type(err).__name__, overrides=runtime.overrides
            )
        raise
    print_run_summary(summary, run_dir)
    return float(summary["metric_value"])


if __name__ == "__main__":
    main()
