"""Where a run's numbers go: files in the run directory always, Weights & Biases when asked.

The local files (config.yaml, metrics.jsonl, summary.json, status.json) are the source of truth:
reports are built from them without W&B. W&B is best effort: any failure is reported once and the
run continues on the local files.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from saln_exp import PROJECT_ROOT
from saln_exp.images import load_example, load_final_layer, montage, weights_image
from saln_exp.rundir import WANDB_ID, RunFiles, atomic_write, jsonable

log = logging.getLogger(__name__)

X_AXES = ("epoch", "time/wall_s", "samples/backprop")
# how long a run waits for the W&B server before it logs offline (compute nodes often have no route)
INIT_TIMEOUT_S = 10
PROBE_TIMEOUT_S = 5  # a first TCP connection to the server, before wandb.init


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


def wandb_mode(requested: str) -> str:
    """`auto`: online when an API key is known (env or ~/.netrc), else offline. WANDB_MODE wins."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        host = wandb_base_url().split("//")[-1]
        if netrc.netrc().authenticators(host):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def server_reachable(timeout: float | None = None) -> bool:
    """A TCP connection to the W&B server, within seconds: on a compute node without a route,
    wandb.init would otherwise retry for its whole init timeout (or start and then lose the run)."""
    url = urlsplit(wandb_base_url())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection(
            (url.hostname or "", port), timeout=timeout or PROBE_TIMEOUT_S
        ):
            return True
    except OSError:
        return False


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
        if mode == "online" and not server_reachable():
            log.warning("W&B server %s not reachable within %d s; logging offline instead",
                        wandb_base_url(), PROBE_TIMEOUT_S)  # fmt: skip
            return cls.start_offline(cfg, run_dir, run_id, name, group)
        try:
            return cls(_init(cfg, run_dir, run_id, name, group, mode))
        except Exception as err:  # W&B must never take the run down
            if mode != "online":
                log.warning("W&B disabled for this run (%s: %s); metrics stay in %s",
                            type(err).__name__, err, run_dir)  # fmt: skip
                return None
            # the usual compute node: a key but no route to the server. Offline keeps every
            # number for a later `wandb sync`, under the same id and display name.
            log.warning("W&B server not reachable within %d s (%s); logging offline instead",
                        INIT_TIMEOUT_S, type(err).__name__)  # fmt: skip
            return cls.start_offline(cfg, run_dir, run_id, name, group)

    @classmethod
    def start_offline(
        cls, cfg: DictConfig, run_dir: Path, run_id: str, name: str, group: str | None
    ) -> WandbRun | None:
        try:
            import wandb

            wandb.teardown()  # the failed online attempt still holds the run id in W&B's service
            return cls(_init(cfg, run_dir, run_id, name, group, "offline"))
        except Exception as err:
            log.warning("W&B disabled for this run (%s: %s); metrics stay in %s",
                        type(err).__name__, err, run_dir)  # fmt: skip
            return None

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:
            log.warning("W&B %s failed (%s); continuing with local files only", what, err)
            # finish the broken run: left open, it would be the next wandb.init's run in this
            # process (the next job of a sweep)
            with contextlib.suppress(Exception):
                self.run.finish(exit_code=1)
            self.run = None

    def log(self, metrics: dict[str, Any]) -> None:
        self._guard("log", lambda: self.run.log(jsonable(metrics)))

    def log_images(self, images: dict[str, Any]) -> None:
        """Images by key: a PNG path, or an array (H x W, or H x W x 3, values in [0, 1])."""

        def send():
            import wandb

            self.run.log(
                {k: wandb.Image(str(p) if isinstance(p, Path) else p) for k, p in images.items()}
            )

        self._guard("image upload", send)

    def log_table(self, key: str, frame: Any) -> None:
        def send():
            import wandb

            self.run.log({key: wandb.Table(dataframe=frame)})

        self._guard(f"table {key}", send)

    def log_artifact(self, path: Path, name: str, kind: str, aliases: list[str]) -> None:
        def send():
            import wandb

            artifact = wandb.Artifact(name, type=kind)
            artifact.add_file(
                str(path)
            )  # copied to W&B's staging area now: later rotations are safe
            self.run.log_artifact(artifact, aliases=aliases)

        self._guard(f"artifact {name}", send)

    def summary(self, values: dict[str, Any]) -> None:
        self._guard("summary", lambda: self.run.summary.update(jsonable(values)))

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        offline = getattr(self.run.settings, "mode", None) == "offline"
        run_dir, run_id = Path(self.run.settings.root_dir), self.run.id
        self._guard("finish", lambda: self.run.finish(exit_code=1 if failed else 0))
        self.run = None
        if offline:
            # every offline part of this run (one per resume), oldest first; W&B adds "-1", "-2"
            # to a part that starts in the same second as an earlier one
            parts = sorted(
                {*run_dir.glob(f"wandb/offline-run-*-{run_id}"),
                 *run_dir.glob(f"wandb/offline-run-*-{run_id}-*")}
            )  # fmt: skip
            log.warning("W&B run saved offline; upload it with: wandb sync %s",
                        " ".join(str(p) for p in parts))  # fmt: skip


def without_sdk_telemetry() -> None:
    """Turn off the W&B SDK's own usage telemetry (OpenTelemetry metrics about the SDK, sent to the
    server) for this process, before any wandb.init. Its exporters flush at interpreter exit and
    wait on a server that accepts connections but never answers: 21.6 s after the sync hint of a
    run that had already fallen back to offline, once per process. The runs' own data is not
    affected."""
    with contextlib.suppress(ImportError, AttributeError):  # another wandb version: nothing to do
        from wandb.analytics.opentelemetry import opentelemetry_proxy

        opentelemetry_proxy.disable()


def _init(cfg: DictConfig, run_dir: Path, run_id: str, name: str, group: str | None, mode: str):
    import wandb

    without_sdk_telemetry()
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
        settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, console="off", silent=True),
    )
    for axis in X_AXES:
        run.define_metric(axis)
    run.define_metric("*", step_metric="epoch")
    run.define_metric("test/acc", summary="max")
    return run


class Tracking:
    """Local files always, W&B when configured: what the trainer and the entry point talk to."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, name: str, group: str | None):
        self.files = RunFiles(run_dir)
        self.files.write_config(cfg)
        self.wandb = None
        self.log_checkpoints = bool(cfg.logger.get("log_checkpoints", False))
        self.run_id = self._run_id()
        if cfg.logger.get("name", "none") == "wandb":
            self.wandb = WandbRun.start(cfg, self.files.dir, self.run_id, name, group)

    def _run_id(self) -> str:
        """Stable per run directory, so a resumed run continues the same W&B run."""
        path = self.files.path(WANDB_ID)
        if path.exists():
            return path.read_text().strip()
        import uuid

        run_id = uuid.uuid4().hex[:12]
        atomic_write(path, lambda tmp: tmp.write_text(run_id + "\n"))
        return run_id

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        self.files.append_metrics(metrics)
        if self.wandb is not None:
            self.wandb.log(metrics)

    def log_images(self, images: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.log_images(images)

    def log_run_images(self) -> None:
        """What the run has drawn for itself, to W&B: the example batch with kept and dropped
        samples framed (selection_example.pt) and the classifier weights (final_layer.npz). The
        curves are W&B's own charts of the logged metrics; the sweep's figures come from
        `saln-report --to-wandb`."""
        if self.wandb is None:
            return
        images: dict[str, Any] = {}
        example = load_example(self.files.dir)
        if example is not None:
            images["selection_example"] = montage(
                example["images"].numpy(), example["kept"].numpy().astype(bool)
            )
        final_layer = load_final_layer(self.files.dir)
        if final_layer is not None:
            images["final_layer"] = weights_image(final_layer)
        if images:
            self.log_images(images)

    def checkpoint_saved(self, path: Path, epoch: int) -> None:
        """`logger.log_checkpoints`: each checkpoint as an artifact version (aliases latest, epoch-N)."""
        if self.wandb is not None and self.log_checkpoints:
            self.wandb.log_artifact(
                path, f"checkpoint-{self.run_id}", "checkpoint", ["latest", f"epoch-{epoch}"]
            )

    def complete(self, summary: dict[str, Any], final_checkpoint: Path | None = None) -> None:
        self.files.write_summary(summary)
        if self.wandb is not None:
            import pandas as pd

            # the per-epoch metrics as one W&B table, beside the usual charts
            self.wandb.log_table("metrics_table", pd.DataFrame(jsonable(self.files.read_metrics())))
            if self.log_checkpoints and final_checkpoint is not None and final_checkpoint.exists():
                self.wandb.log_artifact(
                    final_checkpoint, f"model-{self.run_id}", "model", ["final"]
                )
            self.wandb.summary({k: v for k, v in summary.items() if k != "config"})
            self.wandb.finish()
        self.files.write_status("completed")

    def fail(self, error: BaseException, status: str = "failed") -> None:
        """The W&B side of a run that did not complete (the entry point writes status.json)."""
        if self.wandb is not None:
            self.wandb.summary({"status": status, "error": f"{type(error).__name__}: {error}"})
            self.wandb.finish(failed=True)
