"""Where a run's numbers go: files in the run directory always, Weights & Biases when asked.

The local files (config.yaml, metrics.jsonl, summary.json, status.json) are the source of truth:
reports are built from them without W&B. W&B is best effort: any failure is reported once and the
run continues on the local files.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saln_exp import PROJECT_ROOT

log = logging.getLogger(__name__)

X_AXES = ("epoch", "time/wall_s", "samples/backprop")


def jsonable(value: Any) -> Any:
    """JSON has no NaN / inf: write them as null so every JSON reader can load the files."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    """Atomic: a reader never sees half a file, even if the job is killed mid-write."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(jsonable(payload), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def git_commit() -> str | None:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class RunFiles:
    """The run directory's files."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.summary_path = self.dir / "summary.json"
        self.status_path = self.dir / "status.json"

    def write_config(self, cfg: DictConfig) -> None:
        OmegaConf.save(cfg, self.dir / "config.yaml", resolve=True)

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(jsonable(metrics), sort_keys=True) + "\n")

    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """After a resume: exactly the epochs the checkpoint holds, no duplicates."""
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(jsonable(m), sort_keys=True) + "\n" for m in history))
        tmp.replace(self.metrics_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def write_status(self, status: str, **extra: Any) -> None:
        """Status with what was there before (overrides, start time) carried over."""
        previous = json.loads(self.status_path.read_text()) if self.status_path.exists() else {}
        payload = {
            "overrides": previous.get("overrides", []),
            "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
            "status": status,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
            **extra,
        }
        write_json(self.status_path, payload)


def wandb_mode(requested: str) -> str:
    """`auto`: online when an API key is known (env or ~/.netrc), else offline. WANDB_MODE wins."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1]
        if netrc.netrc().authenticators(host):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


class WandbRun:
    """A W&B run that never fails the training run: every call is guarded."""

    def __init__(self, run: Any):
        self.run = run

    @classmethod
    def start(
        cls, cfg: DictConfig, run_dir: Path, run_id: str, name: str, group: str | None
    ) -> WandbRun | None:
        mode = wandb_mode(str(cfg.logger.get("mode", "auto")))
        if mode == "disabled":
            return None
        try:
            import wandb

            run = wandb.init(
                project=cfg.logger.project,
                entity=cfg.logger.get("entity"),
                group=cfg.logger.get("group") or group,
                job_type=cfg.logger.get("job_type") or cfg.selector.name,
                name=cfg.logger.get("run_name") or name,
                tags=list(cfg.logger.get("tags") or []),
                config=OmegaConf.to_container(cfg, resolve=True),
                dir=str(run_dir),
                id=run_id,
                resume="allow",
                mode=mode,
                settings=wandb.Settings(init_timeout=120, console="off", silent=True),
            )
            for axis in X_AXES:
                run.define_metric(axis)
            run.define_metric("*", step_metric="epoch")
            run.define_metric("test/acc", summary="max")
            return cls(run)
        except Exception as err:  # W&B must never take the run down
            log.warning(
                "W&B disabled for this run (%s: %s); metrics stay in %s",
                type(err).__name__,
                err,
                run_dir,
            )
            return None

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:
            log.warning("W&B %s failed (%s); continuing with local files only", what, err)
            self.run = None

    def log(self, metrics: dict[str, Any]) -> None:
        self._guard("log", lambda: self.run.log(jsonable(metrics)))

    def log_images(self, images: dict[str, Path]) -> None:
        def send():
            import wandb

            self.run.log({k: wandb.Image(str(p)) for k, p in images.items()})

        self._guard("image upload", send)

    def summary(self, values: dict[str, Any]) -> None:
        self._guard("summary", lambda: self.run.summary.update(jsonable(values)))

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        offline = (
            self.run.settings.mode == "offline" if hasattr(self.run.settings, "mode") else False
        )
        sync_dir = Path(self.run.settings.sync_file).parent if offline else None
        self._guard("finish", lambda: self.run.finish(exit_code=1 if failed else 0))
        if sync_dir is not None:
            log.info("W&B run saved offline; upload it with: wandb sync %s", sync_dir)


class Tracking:
    """Local files always, W&B when configured: what the trainer and the entry point talk to."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, name: str, group: str | None):
        self.files = RunFiles(run_dir)
        self.files.write_config(cfg)
        self.wandb = None
        self.run_id = self._run_id()
        if cfg.logger.get("name", "none") == "wandb":
            self.wandb = WandbRun.start(cfg, self.files.dir, self.run_id, name, group)

    def _run_id(self) -> str:
        """Stable per run directory, so a resumed run continues the same W&B run."""
        path = self.files.dir / "wandb_id"
        if path.exists():
            return path.read_text().strip()
        import uuid

        run_id = uuid.uuid4().hex[:12]
        path.write_text(run_id + "\n")
        return run_id

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        self.files.append_metrics(metrics)
        if self.wandb is not None:
            self.wandb.log(metrics)

    def log_images(self, images: dict[str, Path]) -> None:
        if self.wandb is not None:
            self.wandb.log_images(images)

    def complete(self, summary: dict[str, Any]) -> None:
        self.files.write_summary(summary)
        if self.wandb is not None:
            self.wandb.summary({k: v for k, v in summary.items() if k != "config"})
            self.wandb.finish()
        self.files.write_status("completed")

    def fail(self, error: BaseException) -> None:
        self.files.write_status("failed", error=f"{type(error).__name__}: {error}")
        if self.wandb is not None:
            self.wandb.summary({"status": "failed", "error": str(error)})
            self.wandb.finish(failed=True)
