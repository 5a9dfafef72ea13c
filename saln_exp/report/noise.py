"""Label noise in reports: the forgetting-events histogram of a run (Toneva et al. 2019, Fig. 1 and
7: noisy samples are forgotten more often) and the label-noise table (selector x pruning method
against noise rate: test accuracy and the share of trained samples whose label is wrong).

The runs frame from `load.py` may lack the noise rate and pruning columns; they are read from each
run directory's summary.json (or config.yaml) when missing, so this works on any sweep.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from saln_exp import rundir
from saln_exp.report.figures import fit, save
from saln_exp.report.load import BUDGETS, counted
from saln_exp.report.tables import Table, mean_std_n, non_finite_note

log = logging.getLogger(__name__)

NOISY_KEPT = "select/noisy_kept_frac"
PRUNE_KEYS = ("prune/kept_frac", "prune/noisy_kept_frac", "prune/precision", "prune/recall")
GROUP_COLORS = {"clean": "tab:blue", "noisy": "tab:red", "all": "tab:gray"}


# -- forgetting histogram -------------------------------------------------------------------------
def forgetting_counts(run_dir: str | Path) -> pd.DataFrame | None:
    """Samples per number of forgetting events and group (clean / noisy, or all without noise);
    never-learned samples get their own row (events = inf: forgotten infinitely often). None, with
    a warning naming the file, when forgetting.npz is not what a run writes."""
    path = Path(run_dir) / rundir.FORGETTING
    f = rundir.read_arrays(path, ("events", "learned", "presented"), optional=("noisy",))
    if f is None:
        return None
    if any(a.ndim != 1 for a in f.values()) or len({len(a) for a in f.values()}) != 1:
        log.warning("%s skipped: its arrays are not one number per sample", path)
        return None
    events, learned, presented = f["events"], f["learned"].astype(bool), f["presented"]
    noisy = f["noisy"].astype(bool) if "noisy" in f else np.zeros(len(events), bool)
    seen = presented > 0
    groups = (
        {"clean": ~noisy, "noisy": noisy} if noisy[seen].any() else {"all": np.ones_like(noisy)}
    )
    rows = []
    top = int(events[seen].max()) if seen.any() else 0
    for group, member in groups.items():
        member = member & seen
        total = max(int(member.sum()), 1)
        for k in range(top + 1):
            n = int((member & learned & (events == k)).sum())
            rows.append({"group": group, "events": float(k), "n": n, "frac": n / total})
        n = int((member & ~learned).sum())
        rows.append({"group": group, "events": math.inf, "n": n, "frac": n / total})
    return pd.DataFrame(rows)


def run_label(run_dir: Path) -> str:
    """`selector, prune ..., label noise ..., seed ...` from the run's config, for titles."""
    config = _config(run_dir)
    rate = ((config.get("dataset") or {}).get("label_noise") or {}).get("rate", 0.0)
    prune = (config.get("prune") or {}).get("name", "none")
    selector = (config.get("selector") or {}).get("name", "?")
    return f"{selector}, prune {prune}, label noise {rate:g}, seed {config.get('seed')}"


def forgetting_histogram(
    run_dir: str | Path, out_dir: str | Path | None = None, name: str = "forgetting_hist"
) -> list[Path]:
    """Bar chart of forgetting events per sample (fraction of each group), clean and noisy samples
    side by side when the run had label noise; PNG + PDF in `out_dir` (default: the run dir)."""
    run_dir = Path(run_dir)
    counts = forgetting_counts(run_dir)
    if counts is None:
        return []
    groups = list(dict.fromkeys(counts["group"]))
    ticks = sorted(counts["events"].unique())
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        frame = counts[counts["group"] == group].set_index("events").reindex(ticks)
        xs = np.arange(len(ticks)) + (g - (len(groups) - 1) / 2) * width
        n = int(frame["n"].sum())
        ax.bar(xs, frame["frac"], width, color=GROUP_COLORS[group], label=f"{group} (n={n})")
    ax.set_xticks(
        np.arange(len(ticks)), [f"{t:g}" if math.isfinite(t) else "never\nlearned" for t in ticks]
    )
    ax.set_xlabel("forgetting events during training")
    ax.set_ylabel("fraction of samples in the group")
    ax.set_title(fit(f"Forgetting events: {run_label(run_dir)}", 6.6, 10), fontsize=10)
    ax.legend()
    return save(fig, Path(out_dir) if out_dir is not None else run_dir, name)


def forgetting_figures(runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One histogram per configuration (its lowest seed) among completed runs with forgetting.npz."""
    done = add_noise_columns(runs[runs["status"] == "completed"])
    done = done[
        done["run_dir"].map(lambda d: isinstance(d, str) and (Path(d) / rundir.FORGETTING).exists())
    ]
    paths: list[Path] = []
    first = (
        done.sort_values("seed").groupby(["selector", "prune", "noise_rate"], dropna=False).head(1)
    )
    for _, row in first.iterrows():
        name = f"forgetting_{row['selector']}_prune={row['prune']}_noise={row['noise_rate']:g}"
        paths += forgetting_histogram(row["run_dir"], out_dir, name)
    return paths


# -- label-noise table ----------------------------------------------------------------------------
def _config(run_dir: Path) -> dict[str, Any]:
    return rundir.RunFiles(run_dir).read_config()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def add_noise_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """`noise_rate`, `prune` and the prune/* summary numbers, from the run directories where the
    frame does not have them yet."""
    runs = runs.copy()
    wanted = ["noise_rate", "prune", *PRUNE_KEYS]
    if all(c in runs for c in wanted) or "run_dir" not in runs:
        for c in wanted:
            runs[c] = runs.get(c, 0.0 if c == "noise_rate" else np.nan)
        runs["prune"] = runs["prune"].fillna("none")
        return runs
    extra = []
    for run_dir in runs["run_dir"]:
        run_dir = Path(run_dir) if isinstance(run_dir, str) else None
        summary = _read_json(run_dir / rundir.SUMMARY) if run_dir else {}
        config = _config(run_dir) if run_dir else {}
        noise = (config.get("dataset") or {}).get("label_noise") or {}
        row = {
            "noise_rate": float(noise.get("rate", 0.0) or 0.0),
            "prune": (config.get("prune") or {}).get("name", "none"),
        }
        row.update({k: summary.get(k, np.nan) for k in PRUNE_KEYS})
        extra.append(row)
    filled = pd.DataFrame(extra, index=runs.index)
    for c in wanted:
        runs[c] = runs[c].fillna(filled[c]) if c in runs else filled[c]
    return runs


def noisy_kept_fraction(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> pd.Series:
    """Per run, the share of trained samples whose label is wrong: the selector's
    `select/noisy_kept_frac` averaged over epochs (measured after pruning, so it includes it), else
    its final-epoch value, else the pruning record's `prune/noisy_kept_frac`; 0 without noise."""
    out = pd.Series(np.nan, index=runs.index, dtype=float)
    if curves is not None and NOISY_KEPT in curves:
        per_run = curves.groupby("run_id")[NOISY_KEPT].mean()
        out = runs["run_id"].map(per_run).astype(float)
    if NOISY_KEPT in runs:
        out = out.fillna(pd.to_numeric(runs[NOISY_KEPT], errors="coerce"))
    out = out.fillna(pd.to_numeric(runs["prune/noisy_kept_frac"], errors="coerce"))
    return out.mask(runs["noise_rate"] == 0, 0.0)


def noise_table(
    runs: pd.DataFrame,
    curves: pd.DataFrame | None = None,
    rates: list[float] | None = None,
    metric: str = "final_test_acc",
) -> Table:
    """Rows: selector and pruning method (and the budget, where runs differ in one); columns: per
    noise rate, test accuracy and the noisy share of trained samples, as mean ± std over seeds.
    `rates` defaults to those present. Runs with a non-finite number are flagged in the note."""
    done = add_noise_columns(counted(runs))
    if rates is None:
        rates = sorted(done["noise_rate"].dropna().unique())
    noisy_kept = noisy_kept_fraction(done, curves)
    acc = pd.to_numeric(done[metric], errors="coerce")
    columns, digits, groups = {}, {}, {}
    for rate in rates:
        at = np.isclose(done["noise_rate"].astype(float), rate)
        columns[f"test acc @ noise {rate:g}"] = acc.where(at)
        digits[f"test acc @ noise {rate:g}"] = 4
        groups[f"test acc @ noise {rate:g}"] = ("test accuracy", f"noise {rate:g}")
        if rate > 0:  # without noise every trained sample is clean: nothing to show
            columns[f"noisy kept @ noise {rate:g}"] = noisy_kept.where(at)
            digits[f"noisy kept @ noise {rate:g}"] = 3
            groups[f"noisy kept @ noise {rate:g}"] = (
                "noisy share of trained samples",
                f"noise {rate:g}",
            )
    keys = ["selector", "prune", *(b for b in BUDGETS if b in done and done[b].nunique() > 1)]
    frame = pd.concat([done[keys], pd.DataFrame(columns, index=done.index)], axis=1)
    numbers = mean_std_n(frame, keys) if len(frame) else pd.DataFrame()
    numbers = numbers.iloc[sorted(range(len(numbers)), key=lambda i: _row_order(numbers.index[i]))]
    note = _note(done, metric)
    flagged = runs[(runs["status"] == "completed") & ~runs.index.isin(done.index)]
    if len(flagged):
        note += " " + non_finite_note(flagged)
    return Table("Label noise: selectors and dataset pruning", numbers, digits, note, groups)


def _row_order(key: tuple) -> tuple:
    """`none` (the baseline) first in each level, then alphabetical."""
    return tuple((str(k) != "none", str(k)) for k in key)


def _note(done: pd.DataFrame, metric: str) -> str:
    parts = []
    pruned = done[done["prune"] != "none"]
    for (method, rate), group in pruned.groupby(["prune", "noise_rate"]):
        text = f"{method} @ {rate:g}: kept {group['prune/kept_frac'].mean():.2f}"
        if rate > 0:
            p, r = group["prune/precision"].mean(), group["prune/recall"].mean()
            text += f", precision {p:.2f}, recall {r:.2f}"
        parts.append(text)
    prune_text = (
        "Pruning against the injected label errors (mean over runs; precision = noisy share of "
        "the dropped, recall = dropped share of the noisy): " + "; ".join(parts) + "."
        if parts
        else ""
    )
    return (
        f"Mean ± std over seeds (n runs) of `{metric}`. noisy kept: fraction of the samples trained "
        "on whose label was corrupted (the selector's select/noisy_kept_frac averaged over epochs, "
        f"measured after pruning). {prune_text}"
    ).strip()
