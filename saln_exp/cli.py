"""`saln-train`: the command line is checked before torch is imported and before Hydra creates a
directory, then Hydra's app runs the task (`saln_exp.train.run`).

Hydra reports the two most common mistakes, a misspelt key (`trainer.epoch=3`) and a choice that
is no file of its group (`selector=sal`), on several lines with exit status 1; and it creates the
run directory before the task can refuse a wrong value, or a name that would put the directory
somewhere else (`selector.name=../x`). So the config is composed here first, with Hydra's own
argument parser and compose API, and every mistake becomes one line (the closest valid key or
choice where there is one) and exit status 2, with nothing written. A sweep (`-m`) is composed
once for each swept group choice; each of its jobs checks its own values when it runs, as before.
A command that asks Hydra for something other than a run (`--help`, `--cfg`, `--info`, another
config tree with `--config-path` / `--config-dir`) goes to Hydra unchecked.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence

import hydra
from hydra import compose, initialize_config_dir

# the argument parser hydra.main itself uses (hydra-core is pinned in constraints.txt)
from hydra._internal.utils import get_args_parser
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from saln_exp import PROJECT_ROOT
from saln_exp.config import check_known_keys, did_you_mean, unknown_key, validate
from saln_exp.errors import UserError

CONF_DIR = PROJECT_ROOT / "conf"
CONFIG_NAME = "config"
# the directories Hydra creates: a run's, and a sweep's with one subdirectory per job
RUN_DIRS = ("hydra.run.dir",)
SWEEP_DIRS = ("hydra.sweep.dir", "hydra.sweep.subdir")
REFERENCE = re.compile(r"\$\{([\w.]+)\}")  # ${key}; a resolver (${now:...}) has a colon


def main() -> None:
    args = get_args_parser().parse_args()
    if _runs_the_task(args):
        try:
            check_command_line(args.overrides, args.multirun, args.config_name or CONFIG_NAME)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    hydra_app()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=CONFIG_NAME)
def hydra_app(cfg: DictConfig) -> float:
    from saln_exp.train import run  # torch and the rest: only for a command line that can run

    return run(cfg)


def _runs_the_task(args: argparse.Namespace) -> bool:
    asks_hydra = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion,
                  args.experimental_rerun, args.config_path, args.config_dir)  # fmt: skip
    return not any(asks_hydra)


def check_command_line(
    overrides: Sequence[str], multirun: bool = False, config_name: str = CONFIG_NAME
) -> None:
    """Raise UserError, one line, at the first mistake of `saln-train [-m] <overrides>`. A run
    (not a sweep) has its values checked too (`config.validate`)."""
    GlobalHydra.instance().clear()  # a process composes one config tree at a time
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        parsed = _parse(overrides, loader)
        swept = [o.input_line for o in parsed if o.is_sweep_override()]
        for job in _jobs(parsed, loader):
            cfg = _compose(config_name, job)
            sweeping = multirun or cfg.hydra.mode == RunMode.MULTIRUN  # -m, or the config says so
            if swept and not sweeping:
                raise UserError(
                    f"{swept[0]} is a sweep: add -m to run one job per value "
                    "(a list is written [a,b], a string with a comma 'a,b')"
                )
            check_path_parts(cfg, parsed, sweeping)
            if sweeping:
                check_known_keys(cfg)
            else:
                validate(cfg)


def _parse(overrides: Sequence[str], loader: ConfigLoader) -> list[Override]:
    try:
        return OverridesParser.create(config_loader=loader).parse_overrides(list(overrides))
    except OverrideParseException as err:
        raise UserError(f"cannot read {err.override!r}: {_one_line(err)}") from None


def _values(override: Override) -> list[str]:
    """What a sweep's jobs set its key to; an interval (for a sweeper such as Optuna) by its start."""
    if override.is_discrete_sweep():
        return list(override.sweep_string_iterator())
    return [str(override.value().start)]


def _is_group(override: Override, loader: ConfigLoader) -> bool:
    return bool(loader.get_group_options(override.key_or_group))


def _jobs(parsed: list[Override], loader: ConfigLoader) -> Iterator[list[str]]:
    """The override lists to compose: every sweep at its first value, then each further choice of
    a swept group (a choice decides which keys exist; a swept key's values do not)."""
    columns = []
    for o in parsed:
        if not o.is_sweep_override():
            columns.append([o.input_line])
            continue
        values = [f"{o.get_key_element()}={v}" for v in _values(o)]
        columns.append(values if _is_group(o, loader) else values[:1])
    first = [column[0] for column in columns if column]
    if len(first) < len(columns):  # a sweep over nothing (a glob that matches no file)
        return
    yield first
    for i, column in enumerate(columns):
        for choice in column[1:]:
            yield [*first[:i], choice, *first[i + 1 :]]


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    try:
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(composition_error(err)) from None


def composition_error(err: Exception) -> str:
    """Hydra's error as one line: a missing choice or key with the closest valid one."""
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, choice = err.missing_cfg_file.rpartition("/")
        return (
            f"{group}={choice}: there is no such {group}{did_you_mean(choice, err.options)} "
            f"(the choices: {', '.join(err.options)})"
        )
    cause = err.__cause__
    if (
        isinstance(cause, ConfigAttributeError | ConfigKeyError)
        and isinstance(cause.parent_node, DictConfig)
        and cause.full_key
    ):  # `Could not override 'trainer.epoch'`: the parent node holds the keys there are
        return unknown_key(cause.full_key, [k for k in cause.parent_node if k != "hydra"])
    return ": ".join(_one_line(e) for e in (err, cause) if e is not None and str(e).strip())


def _one_line(err: Exception) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def check_path_parts(cfg: DictConfig, parsed: list[Override], sweeping: bool) -> None:
    """A config value that Hydra writes into the name of the directory it creates (the default
    run directory ends in `<dataset.name>_<model.name>_<selector.name>`) must be one name: a `/`
    or a `..` would create the directory outside paths.log_dir. `paths.*` name directories, and
    Hydra's own values (hydra.job.num) are numbers."""
    for where in SWEEP_DIRS if sweeping else RUN_DIRS:
        node, _, leaf = where.rpartition(".")
        template = str(OmegaConf.to_container(OmegaConf.select(cfg, node), resolve=False)[leaf])
        for key in REFERENCE.findall(template):
            if key.split(".")[0] in ("paths", "hydra"):
                continue
            try:
                values = [str(OmegaConf.select(cfg, key, throw_on_missing=False))]
            except OmegaConfBaseException:  # Hydra names the interpolation that fails
                continue
            values += [v for o in parsed if o.is_sweep_override() and o.key_or_group == key
                       for v in _values(o)]  # fmt: skip
            for value in values:
                if "/" in value or "\0" in value or value in ("", ".", ".."):
                    raise UserError(
                        f"{key}={value!r} would be part of the name of the directory Hydra "
                        f"creates ({where}: {template}); it must be one name: no '/', not '..'"
                    )
