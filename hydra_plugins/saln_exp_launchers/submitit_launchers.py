"""Submitit launchers (Slurm and local) that wait for every job and record the ones that died.

hydra-submitit-launcher collects results with `[job.results()[0] for job in jobs]`, so the first
job that was cancelled, killed or lost with its node raises in the launching process and the
sweep is abandoned with the remaining jobs unaccounted for. These subclasses submit exactly as
upstream does (the submission code is upstream's, unchanged), then collect each job on its own:
a job that produced no result is written to its `status.json` as failed and returned as NaN, so
the sweep runs to its end and the `SweepStatus` callback lists it and exits non-zero.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as upstream
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from saln_exp.rundir import RunFiles
from saln_exp.sweep import CPUS_PER_TASK_ENV

log = logging.getLogger(__name__)


class TolerantCollection:
    """Mixin over upstream's BaseSubmititLauncher: same submission, per-job result collection."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        jobs = self._submit(job_overrides, initial_job_idx)
        return [
            self._collect(job, list(overrides), initial_job_idx + i)
            for i, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True))
        ]

    def _collect(self, job: Any, overrides: list[str], idx: int) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as err:  # UncompletedJobError, FailedJobError: no result was written
            try:
                state = job.state  # e.g. "CANCELLED by 0", "NODE_FAIL", "OUT_OF_MEMORY"
            except Exception:
                state = "unknown"
            reason = f"job {job.job_id} ended in state {state} without a result"
            job_dir = Path(str(self.config.hydra.sweep.dir)) / str(idx)
            files = RunFiles(job_dir)
            files.mkdir()
            files.try_write_status(
                "failed",
                error=f"{type(err).__name__}: {reason}",
                overrides=overrides,
                slurm_job_id=job.job_id,
            )
            log.error("job #%d (%s) produced no result: %s", idx, " ".join(overrides), reason)
            failed = JobReturn(
                overrides=overrides, working_dir=str(job_dir), status=JobStatus.COMPLETED
            )
            failed.return_value = math.nan
            return failed

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        """Upstream's BaseSubmititLauncher.launch up to the submission (hydra-submitit-launcher 1.2)."""
        import submitit

        assert self.config is not None
        num_jobs = len(job_overrides)
        assert num_jobs > 0
        params = self.params
        init_params = {"folder": self.params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(
            **{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys}
        )
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {
            x if x in baseparams else f"{self._EXECUTOR}_{x}": y
            for x, y in params.items()
            if x not in init_keys
        }
        executor.update_parameters(**params)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    idx,
                    f"job_id_for_{idx}",
                    Singleton.get_state(),
                )
            )
        return executor.map_array(self, *zip(*job_params, strict=True))


class SlurmLauncher(TolerantCollection, upstream.SlurmLauncher):
    pass


class LocalLauncher(TolerantCollection, upstream.LocalLauncher):
    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        # submitit's local executor does not tell a job its cpus_per_task; the jobs inherit this
        # environment, and saln-train sizes its torch thread pool from it
        os.environ[CPUS_PER_TASK_ENV] = str(self.params.get("cpus_per_task") or 1)
        return super()._submit(job_overrides, initial_job_idx)
