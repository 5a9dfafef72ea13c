"""Runs -> two DataFrames: one row per run (`runs`) and one row per run and epoch (`curves`).

The run directories' files (config.yaml, metrics.jsonl, summary.json, status.json) are the source
of truth, so a report never needs W&B; a W&B project is read into the same two frames when online.
Identity columns come from explicit config fields (dataset, model, selector, seed, experiment),
never from directory names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from saln_exp import rundir
from saln_exp.errors import UserError
from saln_exp.report.recipe import config_id, recipe_differences, results_config

# the columns that say which configuration a run is; everything else is a measurement
ID_COLUMNS = [
    "experiment",
    "dataset",
    "model",
    "selector",
    "selector_choice",
    "paper_row",
    "filter_ratio",
    "batch_size",
    "lr",
    "scheduler",
    "epochs",
    "seed",
    "prune",
    "noise_rate",
]
# summary.json scalars worth a column (the rest of the summary is config or bookkeeping)
SUMMARY_COLUMNS = [
    "final_test_acc",
    "best_test_acc",
    "best_epoch",
    "final_train_acc",
    "final_val_acc",
    "train_time_s",
    "prepare_time_s",
    "total_time_s",
    "samples_backprop",
    "optim_steps",
    "target_acc",
    "time_to_target_s",
    "wall_to_target_s",
    "backprop_to_target",
    "epoch_to_target",
    "prune/kept_frac",
    "prune/noisy_kept_frac",
    "prune/precision",
    "prune/recall",
    "prune/time_s",
]
# what a run spends: runs that differ in these are never pooled into one mean (separate rows)
BUDGETS = ("epochs", "batch_size", "filter_ratio")
RUN_FILES = (rundir.SUMMARY, rundir.STATUS, rundir.METRICS)


class ReportError(UserError):
    """Nothing to report on, or a source that cannot be read."""


@dataclass
class Runs:
    runs: pd.DataFrame  # one row per run: identity columns, summary numbers, final-epoch metrics
    curves: pd.DataFrame  # one row per run and epoch: run_id, epoch, every metrics.jsonl key
    # the runs left out as duplicates: kept run -> the runs of the same configuration and seed
    duplicates: dict[str, list[str]] = field(default_factory=dict)

    @property
    def completed(self) -> pd.DataFrame:
        """The runs every mean and spread is over: completed, with finite numbers."""
        return counted(self.runs)

    @property
    def non_finite(self) -> pd.DataFrame:
        """Completed runs flagged for an inf / nan value (a diverged run), left out of statistics."""
        done = self.runs[self.runs["status"] == "completed"]
        return done[done["non_finite"] != ""]


def counted(runs: pd.DataFrame) -> pd.DataFrame:
    """Completed runs whose numbers are all finite: the only ones a statistic is computed over."""
    return runs[(runs["status"] == "completed") & (runs["non_finite"] == "")]


def started(sweep_dir: Path) -> float:
    """When a sweep started: its multirun.yaml is written once at launch, while the directory's
    own mtime moves whenever a report is written into it."""
    marker = sweep_dir / "multirun.yaml"
    return (marker if marker.exists() else sweep_dir).stat().st_mtime


def resolve_source(path: str | Path) -> Path:
    """A path as given; `.../latest` that does not exist means the newest sibling sweep."""
    path = Path(path)
    if path.exists():
        return path
    if path.name == "latest" and path.parent.is_dir():
        candidates = [p for p in path.parent.iterdir() if p.is_dir() and p.name != "latest"]
        if candidates:
            return max(candidates, key=lambda p: (started(p), p.name))
    raise ReportError(
        f"{path} does not exist; give a sweep or run directory (outputs/sweeps/<date>)"
    )


def find_run_dirs(path: Path) -> list[Path]:
    """Every run directory saln-exp wrote at or under `path` (one holding summary.json,
    status.json or metrics, and marked as saln-exp's: another tool's files are not runs)."""
    found = {f.parent for name in RUN_FILES for f in path.rglob(name)}
    found |= {path} if any((path / name).exists() for name in RUN_FILES) else set()
    ours = (d for d in found if rundir.RunFiles(d).written_by_saln_exp())
    return sorted(ours, key=lambda p: (len(p.parts), str(p)))


def model_label(model: dict[str, Any]) -> str | None:
    """ASSIST names FCNets by width (FCNet3000); every other model by its name."""
    name = model.get("name")
    return f"fcnet{model['hidden']}" if name == "fcnet" and model.get("hidden") else name


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The identity columns of a run, from its resolved config."""
    selector = config.get("selector") or {}
    dataset = config.get("dataset") or {}
    choice = config.get("selector_choice") or selector.get("name")  # older runs: the name
    return {
        "experiment": config.get("experiment_name"),
        "dataset": dataset.get("name"),
        "model": model_label(config.get("model") or {}),
        "selector": selector.get("name"),
        "selector_choice": choice,
        # the paper's name for this row (ASSIST's filtering modes, SALN's methods), from the
        # experiment file's `paper_rows`: the report never guesses it from names
        "paper_row": (config.get("paper_rows") or {}).get(choice),
        "filter_ratio": selector.get("filter_ratio"),
        "batch_size": dataset.get("batch_size"),
        "lr": (config.get("optimizer") or {}).get("lr"),
        "scheduler": (config.get("scheduler") or {}).get("name"),
        "epochs": (config.get("trainer") or {}).get("epochs"),
        "seed": config.get("seed"),
        "prune": (config.get("prune") or {}).get("name", "none"),
        "noise_rate": float((dataset.get("label_noise") or {}).get("rate", 0.0) or 0.0),
        "smoke": bool(config.get("smoke")),
        "debug": config.get("debug_name"),
    }


def run_row(
    run_id: str, status: str, config: dict, summary: dict, curve: pd.DataFrame
) -> dict[str, Any]:
    """One runs-table row: identity, summary scalars, and the last epoch's metrics."""
    final = curve.iloc[-1].to_dict() if len(curve) else {}
    final.pop("run_id", None)
    row = {"run_id": run_id, "status": status, **identity(config)}
    row.update({k: summary.get(k) for k in SUMMARY_COLUMNS})
    row.update(final)
    row["train_time_s"] = (
        row.get("train_time_s") if row.get("train_time_s") is not None else _train_seconds(final)
    )
    row["non_finite"] = ", ".join(non_finite_keys(summary, final))
    row["config_id"] = config_id(config) if config else None
    differences = recipe_differences(config)
    row["off_recipe"] = None if differences is None else "; ".join(differences)
    return row


def non_finite_keys(summary: dict[str, Any], final: dict[str, Any]) -> list[str]:
    """The numbers of a run that are inf or nan. In summary.json a nan is written as such (a
    missing number is null); in a metrics row a nan is also how a missing key reads, so there
    only infinities count."""
    scalars = {k: summary.get(k) for k in SUMMARY_COLUMNS}
    bad = [k for k, v in scalars.items() if isinstance(v, float) and not math.isfinite(v)]
    return bad + [
        k for k, v in final.items()
        if k not in scalars and isinstance(v, float) and math.isinf(v)
    ]  # fmt: skip


def _train_seconds(final: dict[str, Any]) -> float:
    """Training time as SALN reports it: training plus selection, without evaluation."""
    return float(final.get("time/train_s", math.nan)) + float(final.get("time/select_s", math.nan))


def _read_json(path: Path) -> dict[str, Any]:
    return rundir.read_json(path)


def read_curve(path: Path) -> pd.DataFrame:
    """metrics.jsonl as a frame (nulls -> NaN); empty when the run has not finished an epoch."""
    records = rundir.read_jsonl(path)  # a half-written last line is skipped with a warning
    return pd.DataFrame.from_records(records).apply(pd.to_numeric, errors="coerce")


def read_local_run(
    run_dir: Path, run_id: str
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    summary = _read_json(run_dir / rundir.SUMMARY)
    status = _read_json(run_dir / rundir.STATUS).get("status") or summary.get("status") or "unknown"
    config = rundir.RunFiles(run_dir).read_config()  # a crafted config.yaml: a warning, no code
    curve = read_curve(run_dir / rundir.METRICS)
    row = run_row(run_id, status, config, summary, curve)
    row["run_dir"] = str(run_dir)
    return row, curve.assign(run_id=run_id), config or {}


def load_runs(paths: list[str | Path]) -> Runs:
    """Every run under the given sweep or run directories."""
    rows, curves, configs = [], [], []
    for source in map(resolve_source, paths):
        for run_dir in find_run_dirs(source):
            row, curve, config = read_local_run(
                run_dir, str(run_dir.resolve())
            )  # one id per run, however reached
            rows.append(row)
            curves.append(curve)
            configs.append(config)
    if not rows:
        raise ReportError(
            f"no runs found under {', '.join(map(str, paths))} (no run directory saln-exp wrote: "
            f"{rundir.SUMMARY} / {rundir.STATUS} with a saln-exp config)"
        )
    return assemble(rows, curves, configs)


def assemble(
    rows: list[dict[str, Any]], curves: list[pd.DataFrame], configs: list[dict[str, Any]]
) -> Runs:
    """The frames, with each configuration-and-seed counted once, grouped and labelled."""
    runs = pd.DataFrame(rows)
    runs["config"] = configs
    runs = runs.drop_duplicates("run_id")
    runs, duplicates = without_duplicates(runs)
    configs = runs.pop("config").tolist()
    runs = runs.reset_index(drop=True)
    # str of a missing value stays missing under pandas' string dtype: name it, or the run is lost
    runs["group"] = runs["experiment"].fillna(
        runs["dataset"].fillna("unknown").astype(str)
        + "_"
        + runs["model"].fillna("unknown").astype(str)
    )
    runs["variant"] = variant_labels(runs, configs)
    ids = set(runs["run_id"])
    kept = [c for c in curves if len(c) and c["run_id"].iloc[0] in ids]
    curve_frame = (
        pd.concat(kept, ignore_index=True) if kept else pd.DataFrame({"run_id": [], "epoch": []})
    )
    return Runs(runs=runs, curves=curve_frame, duplicates=duplicates)


def run_name(row: pd.Series) -> str:
    """A run as a person finds it again: its directory, or its W&B id."""
    return str(row["run_dir"]) if isinstance(row.get("run_dir"), str) else str(row["run_id"])


def without_duplicates(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """One run per configuration and seed: the most complete (completed first, then the one
    with most epochs, then the first by name); the others are returned by the kept one's name.
    Runs without a recorded configuration or seed are never merged."""
    names = runs.apply(run_name, axis=1)
    epochs_done = pd.to_numeric(runs["epoch"], errors="coerce") if "epoch" in runs else 0
    ranked = runs.assign(
        _unfinished=runs["status"] != "completed", _epochs=-epochs_done, _name=names
    ).sort_values(["_unfinished", "_epochs", "_name"], na_position="last")
    duplicates: dict[str, list[str]] = {}
    known = ranked["config_id"].notna() & ranked["seed"].notna()
    for _, same in ranked[known].groupby(["config_id", "seed"], sort=False):
        if len(same) > 1:
            duplicates[same["_name"].iloc[0]] = same["_name"].iloc[1:].tolist()
    dropped = {name for names in duplicates.values() for name in names}
    keep = ~names.isin(dropped)
    return runs[keep], duplicates


# identity columns a label may name, by their short names; budgets are among them, so runs of
# different budgets are different rows and lines, never one mean
LABEL_COLUMNS = ("model", *BUDGETS, "lr", "prune", "noise_rate")


def variant_labels(runs: pd.DataFrame, configs: list[dict[str, Any]]) -> pd.Series:
    """A short label per run naming what differs from the other runs of its group (seeds aside):
    the line names in figures and row names in comparisons. Runs that would still share a label
    with another configuration get the settings that tell them apart, so a label is one
    configuration and a row's n counts its seeds."""
    labels = pd.Series("", index=runs.index, dtype=object)
    for _, group in runs.groupby("group", dropna=False):
        method = method_column(group)
        per_method = group.groupby(method, dropna=False)
        varying = [c for c in LABEL_COLUMNS if (per_method[c].nunique(dropna=False) > 1).any()]
        parts = [as_text(group[method])] + [f"{c}=" + as_text(group[c]) for c in varying]
        labels[group.index] = pd.concat(parts, axis=1).agg(" ".join, axis=1)
    return labels + settings_apart(runs, configs, labels)


def settings_apart(
    runs: pd.DataFrame, configs: list[dict[str, Any]], labels: pd.Series
) -> pd.Series:
    """For runs whose label covers several configurations: ` key=value` for each setting that
    differs among them (seeds aside); empty elsewhere."""
    extra = pd.Series("", index=runs.index, dtype=object)
    flat = pd.Series([results_config(c) for c in configs], index=runs.index)
    for _, same in runs.groupby([runs["group"], labels], dropna=False):
        if same["config_id"].nunique() < 2:
            continue
        settings = [flat[i] for i in same.index]
        keys = sorted({k for s in settings for k in s if k != "seed"})
        differ = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
        for i, s in zip(same.index, settings, strict=True):
            extra[i] = "".join(f" {k}={s.get(k)}" for k in differ)
    return extra


def as_text(column: pd.Series) -> pd.Series:
    """Strings for labels; object dtype first, because pandas' string dtype keeps missing values
    missing through astype(str)."""
    return column.astype(object).fillna("—").astype(str)


def method_column(runs: pd.DataFrame) -> str:
    """Which vocabulary names this group's methods: the paper's row names when the experiment
    file gives them for every run (`paper_rows`), else the selector files chosen."""
    if runs["paper_row"].notna().all():
        return "paper_row"
    return "selector_choice"


def wandb_is_online() -> bool:
    from saln_exp.tracking import wandb_mode

    return wandb_mode("auto") == "online"


def load_wandb(spec: str) -> Runs:
    """`entity/project[:group]` through wandb.Api; only when online (credentials and network)."""
    project, _, group = spec.partition(":")
    if not wandb_is_online():
        raise ReportError(
            f"--wandb {spec} needs W&B online (WANDB_API_KEY or `wandb login`, WANDB_MODE not offline); "
            "offline, report from the run directories instead"
        )
    try:
        import wandb

        api = wandb.Api(timeout=60)
        wandb_runs = list(api.runs(project, filters={"group": group} if group else None))
        rows, curves, configs = [], [], []
        for run in wandb_runs:
            curve = run.history(samples=100_000, pandas=True).sort_values("epoch")
            curve = curve[[c for c in curve.columns if not c.startswith("_")]].reset_index(
                drop=True
            )
            summary = dict(run.summary._json_dict)
            status = "completed" if run.state == "finished" else run.state
            rows.append(
                run_row(
                    run.path[-1] if isinstance(run.path, list) else run.id,
                    status,
                    dict(run.config),
                    summary,
                    curve,
                )
            )
            curves.append(curve.assign(run_id=rows[-1]["run_id"]))
            configs.append(dict(run.config))
    except Exception as err:  # network, auth, unknown project: one line, not a traceback
        raise ReportError(
            f"could not read W&B runs of {spec}: {type(err).__name__}: {err}"
        ) from None
    if not rows:
        raise ReportError(f"W&B {spec} has no runs")
    return assemble(rows, curves, configs)
