"""Which runs are one result, and which ran a paper's recipe.

Two runs with the same configuration and seed are one result counted twice (an accidental
restart, a repeated command); a run whose configuration differs from its experiment file's on a
setting that changes results is not the paper's recipe, whatever its `experiment` label says.
Both questions ignore the same keys, `RESULT_NEUTRAL`: the settings that change how a run is
executed, logged or stored, not what it computes (docs/reporting.md lists them).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from saln_exp import PROJECT_ROOT

# Settings a user may change without changing a run's results or its recipe: where files go, what
# is logged, how progress is shown, checkpoint cadence, threads and device, loading mechanics,
# and the report's own labels. Dotted prefixes: `logger` covers every logger.* key.
RESULT_NEUTRAL = (
    "paths", "logger", "tags", "metric", "resume", "device", "deterministic",
    "trainer.progress", "trainer.checkpoint", "trainer.checkpoint_every_steps",
    "trainer.log_every_steps", "trainer.example_batch", "trainer.threads", "trainer.channels_last",
    "trainer.compile", "trainer.cudnn_benchmark", "trainer.dist_timeout_s",
    "eval.batch_size", "eval.target_acc",
    "dataset.download", "dataset.storage", "dataset.workers", "dataset.max_decoded_gib",
    "model.download", "selector.download",
    "selector_choice", "paper_rows",  # labels: which file was chosen, the paper's row names
)  # fmt: skip
CONF = PROJECT_ROOT / "conf"
ABSENT = "absent"  # how a key one side lacks is shown


def is_neutral(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL)


def without_neutral(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The nested config minus every neutral key."""
    out = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if is_neutral(dotted):
            continue
        out[key] = without_neutral(value, dotted + ".") if isinstance(value, dict) else value
    return out


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (lists and empty mappings are leaves)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def results_config(config: dict[str, Any]) -> dict[str, Any]:
    """What decides a run's numbers: its resolved config, flat, without the neutral keys."""
    return flatten(without_neutral(config))


def config_id(config: dict[str, Any]) -> str:
    """A short name for a run's configuration, seed aside: runs that differ only in their seed
    share it (runs.csv shows it)."""
    settings = {k: v for k, v in results_config(config).items() if k != "seed"}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


# -- a paper's recipe: the experiment file, composed for the row the run fills -------------------
def is_group(key: str) -> bool:
    return "." not in key and (CONF / key).is_dir()


def choice(config: dict[str, Any], group: str) -> Any:
    """The conf/<group>/ file a run chose: `selector_choice` for selectors (saln_paper and saln
    share a name), the group's `name` otherwise (each file's name is its file name)."""
    if group == "selector" and config.get("selector_choice"):
        return config["selector_choice"]
    return (config.get(group) or {}).get("name")


@functools.cache
def paper_grid(experiment: str) -> dict[str, tuple]:
    """The experiment's sweep, seeds aside: key -> the values the paper's table has rows for."""
    path = CONF / "experiment" / f"{experiment}.yaml"
    params = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("sweeper") or {}
    parser = OverridesParser.create()
    grid = {}
    for key, values in (params.get("params") or {}).items():
        if key == "seed":
            continue
        override = parser.parse_override(f"{key}={values}")
        grid[key] = (
            tuple(override.sweep_iterator())
            if override.is_sweep_override()
            else (override.value(),)
        )
    return grid


@functools.cache
def composed_recipe(experiment: str, choices: tuple[str, ...]) -> dict[str, Any]:
    """`saln-train experiment=<experiment> <choices>` as results_config sees it."""
    from saln_exp.config import compose_config

    cfg = compose_config([f"experiment={experiment}", *choices])
    # neutral keys go first: they hold interpolations (paths) that resolve only inside a run
    kept = without_neutral(OmegaConf.to_container(cfg, resolve=False))
    return flatten(OmegaConf.to_container(OmegaConf.create(kept), resolve=True))


def shown(value: Any) -> str:
    return ABSENT if value is ABSENT else json.dumps(value, default=str).strip('"')


def recipe_differences(config: dict[str, Any]) -> list[str] | None:
    """How a run's configuration differs from its experiment's recipe, one `key: ours vs recipe`
    per setting (empty: the recipe; None: the run names no experiment). The recipe is the
    experiment file composed with the run's values on the keys the file sweeps (the table's rows:
    model width, selector file...), which must be among the values the file sweeps over."""
    experiment = config.get("experiment_name")
    if not experiment:
        return None
    if not (CONF / "experiment" / f"{experiment}.yaml").is_file():
        return [f"experiment: no conf/experiment/{experiment}.yaml to compare with"]
    run = results_config(config)
    grid = paper_grid(experiment)
    out, choices = [], []
    for key, values in grid.items():
        value = choice(config, key) if is_group(key) else run.get(key, ABSENT)
        if value not in values:
            out.append(f"{key}: {shown(value)} (the paper's: {', '.join(map(str, values))})")
        if is_group(key) and value is not None:
            choices.append(f"{key}={value}")
    try:
        recipe = composed_recipe(experiment, tuple(choices))
    except Exception as err:  # a group file that no longer exists: one line, not a traceback
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return [
            *out,
            f"recipe: cannot compose experiment={experiment} {' '.join(choices)} ({first})",
        ]
    for key in sorted(set(run) | set(recipe)):
        if key == "seed" or key in grid:
            continue
        ours, theirs = run.get(key, ABSENT), recipe.get(key, ABSENT)
        if ours != theirs:
            out.append(f"{key}: {shown(ours)} vs {shown(theirs)}")
    return out
