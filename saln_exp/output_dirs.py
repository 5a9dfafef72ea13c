"""The run directory made before Hydra makes it, so that a `hydra.run.dir` that cannot be created
(under a file, on a read-only filesystem, without permission) is one line and exit 2 instead of
Hydra's traceback. Hydra creates the directory between this callback and the job, with
`exist_ok`, so the directory made here is the one the run uses. (A sweep directory is made, and
refused in one line, by `sweep.SweepStatus`.)

Listed under `hydra.callbacks` in conf/hydra/default.yaml.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from saln_exp.rundir import RunDirWriteError, RunFiles


class RunDirectory(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the same selection Hydra's run_job makes; `${now:...}` is cached, so both see one time
        run_dir = str(OmegaConf.select(config, "hydra.run.dir"))
        try:
            RunFiles(run_dir).mkdir()
        except RunDirWriteError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
