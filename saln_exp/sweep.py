"""Sweep bookkeeping: what Hydra knows about this job, and `sweep.json` at the sweep root.

Each job records its own outcome in `<job dir>/status.json` (see tracking.RunFiles). When the
sweep ends, the `SweepStatus` callback gathers them into `sweep.json`, prints one line per job,
and exits non-zero if any job failed, so a sweep never reports success over a failed run. Where
a job did not complete, or the sweep is interrupted, it prints the command that resumes the
sweep in place (saln_exp.resume): completed jobs are skipped, unfinished ones continue.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from saln_exp.errors import UserError
from saln_exp.resume import SWEEP_COMMAND_ENV, sweep_command, sweep_lines
from saln_exp.rundir import STATUS, SUMMARY, SWEEP, RunFiles, read_json, write_json

log = logging.getLogger(__name__)

# set by the local launcher for its jobs (submitit's local executor passes no cpus per task)
CPUS_PER_TASK_ENV = "SALN_CPUS_PER_TASK"
LATEST = "latest"
# a command-line value Hydra's basic sweeper expands into several jobs
SWEEP_VALUE = re.compile(r",|^(range|choice|glob|interval)\(")


@dataclass
class Runtime:
    multirun: bool = False
    overrides: list[str] = field(default_factory=list)
    run_name: str | None = None
    group: str | None = None
    selector_choice: str | None = None  # the conf/selector/ file chosen, e.g. saln_paper


def hydra_runtime() -> Runtime:
    """What Hydra knows about the current job; empty when called outside a Hydra app (tests)."""
    if not HydraConfig.initialized():
        return Runtime()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = [str(o) for o in hc.overrides.task]
    return Runtime(
        multirun=multirun,
        overrides=overrides,
        run_name=hc.job.override_dirname or None,
        selector_choice=hc.runtime.choices.get("selector"),
        group=sweep_group(
            hc.runtime.choices.get("experiment"), sys.argv[1:], Path(hc.sweep.dir).name
        )
        if multirun
        else None,
    )


def sweep_group(experiment: str | None, command_line: list[str], sweep_name: str) -> str:
    """The W&B group of a sweep's jobs: what the sweep is (its experiment, else the keys it
    sweeps over on the command line) and when it ran, e.g. `assist_4_5 2026-12-01_12-00-00` or
    `optimizer.lr+seed 2026-12-01_12-00-00`."""
    swept = sorted(
        {
            a.split("=", 1)[0].lstrip("+~")
            for a in command_line
            if "=" in a and SWEEP_VALUE.search(a.split("=", 1)[1])
        }
        - {"experiment", "hydra.sweep.dir"}
    )
    what = experiment if experiment and experiment != "null" else "+".join(swept) or "sweep"
    return f"{what} {sweep_name}"


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job directory under the sweep with its status, overrides and headline numbers."""
    jobs = []
    for status_path in sorted(sweep_dir.glob(f"**/{STATUS}")):
        job_dir = status_path.parent
        status = read_json(status_path)
        entry = {
            "dir": str(job_dir.relative_to(sweep_dir)),
            "status": status.get("status"),
            "overrides": status.get("overrides", []),
            "error": status.get("error"),
        }
        if entry["status"] == "running":  # another sweep into this directory runs it now
            entry["running_elsewhere"] = RunFiles(job_dir).owner_elsewhere()
        summary = read_json(job_dir / SUMMARY)
        if summary:
            entry.update(metric=summary.get("metric"), value=summary.get("metric_value"))
        jobs.append(entry)
    jobs.sort(key=lambda j: (len(j["dir"]), j["dir"]))
    return jobs


def failed_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs that did not complete, leaving out those another process is running now."""
    return [j for j in jobs if j["status"] != "completed" and not j.get("running_elsewhere")]


def write_sweep_json(sweep_dir: Path, started: str | None = None) -> list[dict[str, Any]]:
    jobs = collect_jobs(sweep_dir)
    failed = failed_jobs(jobs)
    elsewhere = any(j.get("running_elsewhere") for j in jobs)
    write_json(
        sweep_dir / SWEEP,
        {
            "status": "failed" if failed else "running elsewhere" if elsewhere else "completed",
            "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "n_jobs": len(jobs),
            "n_failed": len(failed),
            "jobs": jobs,
        },
    )
    return jobs


def point_latest_at(sweep_dir: Path) -> None:
    """`<sweeps>/latest` -> the newest sweep, for `make report` and `make compare`. Only a
    symlink (or nothing) named `latest` is replaced, never a real directory. A sweep resumed
    through the link itself (`hydra.sweep.dir=.../latest`) leaves it as it is."""
    if sweep_dir.is_symlink():
        if not sweep_dir.exists():
            raise UserError(
                f"hydra.sweep.dir={sweep_dir} is a link to nothing ({os.readlink(sweep_dir)})"
            )
        return
    if sweep_dir.name == LATEST:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} does not exist; `{LATEST}` names the newest sweep, "
            "so run one first (or give the sweep's own directory)"
        )
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # under a file, read-only: one line, not Hydra's traceback
        raise UserError(f"cannot create the sweep directory {sweep_dir}: {err.strerror}") from None
    latest = sweep_dir.parent / LATEST
    if latest.exists() and not latest.is_symlink():
        return
    tmp = sweep_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(sweep_dir.name)
    os.replace(tmp, latest)


class SweepStatus(Callback):
    def __init__(self) -> None:
        self.started: str | None = None
        self.resume_command = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            point_latest_at(sweep_dir)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        # this process has the command the user typed; a job run elsewhere (submitit) inherits it
        self.resume_command = sweep_command(sweep_dir, sys.argv[1:])
        os.environ[SWEEP_COMMAND_ENV] = self.resume_command
        self._record_on_signals(sweep_dir)

    def _record_on_signals(self, sweep_dir: Path) -> None:
        """A sweep killed while it waits for its jobs (parallel launchers) still writes sweep.json.
        Jobs that run in this process install their own handlers for their duration."""

        def record_and_exit(signum: int, frame: Any) -> None:
            jobs = write_sweep_json(sweep_dir, self.started)
            print(f"sweep interrupted by {signal.Signals(signum).name}: {len(jobs)} job(s) recorded "
                  f"in {sweep_dir / SWEEP}; {sweep_lines(sweep_dir, self.resume_command)}",
                  file=sys.stderr)  # fmt: skip
            sys.exit(128 + signum)

        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, record_and_exit)
        except ValueError:  # not the main thread
            pass

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = write_sweep_json(sweep_dir, self.started)
        failed = failed_jobs(jobs)
        elsewhere = [j for j in jobs if j.get("running_elsewhere")]
        for job in jobs:
            mark = (
                "ok  " if job["status"] == "completed" else "busy" if job in elsewhere else "FAIL"
            )
            print(f"  {mark} {job['dir']:>4}  {' '.join(job['overrides'])}  {_outcome(job)}",
                  file=sys.stderr)  # fmt: skip
        busy = f", {len(elsewhere)} running in another process" if elsewhere else ""
        print(
            f"sweep: {len(jobs) - len(failed) - len(elsewhere)}/{len(jobs)} jobs completed{busy}; "
            f"{sweep_dir / 'sweep.json'}",
            file=sys.stderr,
        )
        if failed:
            print(sweep_lines(sweep_dir, self.resume_command), file=sys.stderr)
            print(
                f"error: {len(failed)} job(s) failed: "
                + "; ".join(f"#{j['dir']} ({' '.join(j['overrides'])}): {_outcome(j)}" for j in failed),
                file=sys.stderr,
            )  # fmt: skip
            sys.exit(1)


def _outcome(job: dict[str, Any]) -> str:
    if job.get("value") is not None:
        return f"{job.get('metric')}={job.get('value'):.4f}"
    if job.get("running_elsewhere"):
        return f"running in another process ({job['running_elsewhere']}), which records its outcome"
    if job["status"] == "running":  # nobody holds the directory: its process was killed
        return "status running, but no process runs it (killed?); rerun the sweep to resume it"
    return job["error"] or job["status"] or "no status"
