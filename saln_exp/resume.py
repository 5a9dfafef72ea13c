"""The command that resumes an interrupted run or sweep: what an interruption prints.

Pasted as is into a shell, the command continues that run directory from its last checkpoint (a
sweep: that sweep directory, skipping its completed jobs) and ends with the numbers of an
uninterrupted run. It is the command line the run was started with (every override, config flag
and `-m` as typed), with its directory pinned by `hydra.run.dir=` (a sweep: `hydra.sweep.dir=`):
the default directory is named by the launch time, so the bare command would start a new run at
epoch 1. Each word is quoted for the shell (shlex.quote), and the directory for Hydra's override
parser too. docs/run-directory.md#how-to-resume says how to resume, in one place.

A sweep's jobs may run in other processes (submitit), so the sweep callback, which runs in the
process the user started, puts the sweep's command in the environment its jobs inherit.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from saln_exp.rundir import STATUS, read_json

RUN_DIR, SWEEP_DIR = "hydra.run.dir", "hydra.sweep.dir"
SWEEP_COMMAND_ENV = "SALN_SWEEP_RESUME"  # set by saln_exp.sweep.SweepStatus for its jobs
SKIPPED_JOBS = "its completed jobs are skipped"
# characters Hydra's override parser reads unquoted in a value (`,` would make a sweep of it)
_HYDRA_PLAIN = re.compile(r"[\w./:+@%-]+", re.ASCII)


def hydra_value(value: str) -> str:
    """`value` as Hydra's override parser reads it back: single-quoted where it holds anything
    but plain characters; inside quotes, backslashes are doubled only before a quote or at the
    end, as Hydra's grammar asks."""
    if _HYDRA_PLAIN.fullmatch(value):
        return value
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def _program(name: str, module: str) -> list[str]:
    """`name` where the shell finds this environment's one on PATH, else its full path, else
    this interpreter running `module` (the same program)."""
    here = Path(sys.executable).parent / name
    if not here.exists():
        return [sys.executable, "-m", module]
    found = shutil.which(name)
    return [name if found and Path(found).resolve() == here.resolve() else str(here)]


def launcher() -> tuple[list[str], int]:
    """The words that start the training, and on how many nodes the command must be run.

    torchrun on one node: `torchrun --standalone --nproc_per_node=N -m saln_exp.train`, complete.
    On several nodes the rendezvous (endpoint, id) cannot be read back from a worker: the command
    names the nodes and processes, and is run on every node with the rendezvous options the run
    was started with."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun for its workers
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        nodes = max(1, int(os.environ["WORLD_SIZE"]) // per_node)
        placement = ["--standalone"] if nodes == 1 else [f"--nnodes={nodes}"]
        return [*_program("torchrun", "torch.distributed.run"), *placement,
                f"--nproc_per_node={per_node}", "-m", "saln_exp.train"], nodes  # fmt: skip
    return _program("saln-train", "saln_exp.train"), 1


def _pinned(args: list[str], key: str, directory: Path, drop: tuple[str, ...] = ()) -> list[str]:
    """The command-line `args` with `key` (and the keys in `drop`) removed, then key=directory.
    The directory is absolute and resolved, so the command works from any working directory
    and a link such as sweeps/latest cannot point elsewhere by then."""
    gone = {key, *drop}
    kept = [a for a in args if a.split("=", 1)[0].lstrip("+") not in gone]
    return [*kept, f"{key}={hydra_value(str(Path(directory).resolve()))}"]


def _command_line() -> list[str]:
    """The arguments of the command the user typed; none outside a Hydra app (a test calling
    the runner in-process has no command line of its own)."""
    return sys.argv[1:] if HydraConfig.initialized() else []


def run_command(run_dir: Path) -> tuple[str, int]:
    """The command that continues `run_dir` (a `resume=` in the original command gives way to
    the pinned directory), and on how many nodes it runs."""
    words, nodes = launcher()
    args = _pinned(_command_line(), RUN_DIR, run_dir, drop=("resume",))
    return shlex.join([*words, *args]), nodes


def sweep_command(sweep_dir: Path, args: list[str]) -> str:
    """The command that continues the sweep in `sweep_dir`, skipping its completed jobs, from
    the sweep's command-line `args` (the sweep callback runs before Hydra knows of a job)."""
    words, _ = launcher()
    return shlex.join([*words, *_pinned(args, SWEEP_DIR, sweep_dir)])


def in_a_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resume_command(run_dir: Path) -> tuple[str, int]:
    """The command that continues `run_dir`, and on how many nodes it runs. For a job of a sweep
    it is the sweep's command, in whatever process the launcher runs the job."""
    if in_a_sweep():
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        return os.environ.get(SWEEP_COMMAND_ENV) or sweep_command(sweep_dir, _command_line()), 1
    return run_command(run_dir)


def recorded_command(run_dir: Path) -> str | None:
    """The command that resumes the run in `run_dir`, as its status.json records it while the
    run is running or interrupted (a run killed with SIGKILL printed nothing)."""
    return read_json(Path(run_dir) / STATUS).get("resume")


def sweep_lines(sweep_dir: Path, command: str) -> str:
    return f"to resume the sweep {Path(sweep_dir).resolve()} ({SKIPPED_JOBS}), run:\n{command}"


def how_to_resume(run_dir: Path, checkpointed: bool = True) -> str:
    """`to resume ..., run:` and the command on a line of its own (the line to paste).
    `checkpointed=False`: stopped before its first checkpoint, the run starts again there."""
    command, nodes = resume_command(run_dir)
    if in_a_sweep():
        return sweep_lines(Path(HydraConfig.get().sweep.dir), command)
    run_dir = Path(run_dir).resolve()
    what = f"to resume {run_dir} from its last checkpoint"
    if not checkpointed:
        what = f"to start {run_dir} again"
    if nodes > 1:
        what += f" on each of its {nodes} nodes, adding the rendezvous options it was started with"
    return f"{what}, run:\n{command}"
