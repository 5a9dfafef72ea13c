"""The papers' figures from run directories, as PNG and PDF next to the tables.

- curves per epoch and per training second, one line per method (SALN Fig. 1-6, ASSIST Fig. 4.x)
- the images of one batch a selector kept and dropped (SALN Fig. 7-8)
- the final layer's weight heatmap and histogram (SALN Fig. 9-10)
- batch accumulation statistics per epoch (ASSIST Appendix Fig. 6)

Figures are drawn on `matplotlib.figure.Figure` objects, never through pyplot, so nothing here
touches a global backend or leaks open figures when the runner calls it inside a training process.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from itertools import cycle
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from saln_exp import rundir
from saln_exp.report.load import Runs, load_runs
from saln_exp.report.tables import TRAIN_SECONDS, with_train_seconds
from saln_exp.safe_load import UNREADABLE, load_plain

log = logging.getLogger(__name__)

KEPT_RGB, DROPPED_RGB = np.array([0.1, 0.7, 0.2]), np.array([0.85, 0.1, 0.1])
SPLIT_STYLES = {"test": "-", "train": "--", "val": ":"}
ACCUMULATION_PANELS = (
    ("select/raw_batches_per_step", "raw batches per optimizer step"),
    ("overflow_per_step", "discarded overflow per step (samples)"),
    ("select/kept_frac", "kept fraction of seen samples"),
    ("steps_per_epoch", "optimizer steps per epoch"),
)


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """PNG for reading, PDF for papers; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=110)
    fig.savefig(paths[1])
    return paths


def seed_mean(curves: pd.DataFrame, runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per variant and epoch: mean and std over seeds of `columns` (x values averaged too)."""
    labelled = curves.merge(runs[["run_id", "variant"]], on="run_id")
    present = [c for c in columns if c in labelled]
    return labelled.groupby(["variant", "epoch"])[present].agg(["mean", "std"]).reset_index()


# -- curves ---------------------------------------------------------------------------------------
def curves_figure(
    runs: pd.DataFrame, curves: pd.DataFrame, x: str, xlabel: str, title: str
) -> Figure:
    """Accuracy and mean loss of every split against `x`, one colour per variant."""
    splits = [s for s in SPLIT_STYLES if f"{s}/acc" in curves and curves[f"{s}/acc"].notna().any()]
    ys = [f"{s}/{m}" for s in splits for m in ("acc", "loss_mean")]
    means = seed_mean(curves, runs, [x, *ys] if x != "epoch" else ys)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = dict(zip(sorted(runs["variant"].unique()), cycle(_palette())))
    for variant, frame in means.groupby("variant"):
        xs = frame["epoch"] if x == "epoch" else frame[(x, "mean")]
        for ax, metric in zip(axes, ("acc", "loss_mean"), strict=True):
            for split in splits:
                y, spread = (
                    frame[(f"{split}/{metric}", "mean")],
                    frame[(f"{split}/{metric}", "std")].fillna(0),
                )
                ax.plot(xs, y, SPLIT_STYLES[split], color=colors[variant])
                if split == "test":
                    ax.fill_between(
                        xs, y - spread, y + spread, color=colors[variant], alpha=0.15, linewidth=0
                    )
    for ax, ylabel in zip(axes, ("accuracy", "mean cross-entropy loss"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[v], label=v) for v in colors]
    handles += [Line2D([], [], color="0.3", linestyle=SPLIT_STYLES[s], label=s) for s in splits]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    return fig


def _palette() -> list:
    from matplotlib import colormaps

    return [colormaps["tab10"](i) for i in range(10)] + [colormaps["tab20b"](i) for i in range(20)]


# -- selection examples (SALN Fig. 7-8) -------------------------------------------------------------
def montage(images: np.ndarray, kept: np.ndarray, border: int = 2) -> np.ndarray:
    """uint8 [n, C, H, W] -> one RGB grid; kept images framed green, dropped ones red and faded."""
    x = images.astype(np.float32) / 255.0
    x = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x[:, :3]
    x = x.transpose(0, 2, 3, 1)
    x[~kept] = 0.35 * x[~kept] + 0.65
    n, h, w, _ = x.shape
    tiles = np.broadcast_to(
        np.where(kept[:, None], KEPT_RGB, DROPPED_RGB)[:, None, None, :],
        (n, h + 2 * border, w + 2 * border, 3),
    ).copy()
    tiles[:, border : border + h, border : border + w] = x
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    tiles = np.concatenate([tiles, np.ones((rows * cols - n, *tiles.shape[1:]))])
    th, tw = tiles.shape[1:3]
    return (
        tiles.reshape(rows, cols, th, tw, 3)
        .transpose(0, 2, 1, 3, 4)
        .reshape(rows * th, cols * tw, 3)
    )


def load_example(run_dir: str | Path) -> dict | None:
    """The run's saved selection example, read as plain tensors only (a crafted file in a shared
    sweep directory must not run code on its reader); an unreadable one skips the figure."""
    path = Path(run_dir) / rundir.SELECTION_EXAMPLE
    if not path.exists():
        return None
    try:
        return load_plain(path)
    except UNREADABLE as err:
        log.warning(
            "%s is unreadable (%s); its selection figure is skipped", path, type(err).__name__
        )
        return None


def selection_figure(examples: dict[str, dict], title: str) -> Figure:
    """One panel per variant: the example batch, kept (green) and dropped (red, faded)."""
    fig = Figure(figsize=(4.2 * len(examples), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(examples)))
    for ax, (variant, ex) in zip(axes, examples.items(), strict=True):
        kept = ex["kept"].numpy().astype(bool)
        ax.imshow(montage(ex["images"].numpy(), kept), interpolation="nearest")
        ax.set_title(
            f"{variant}: kept {kept.sum()} of {len(kept)} (batch {ex['batch']})", fontsize=9
        )
        ax.axis("off")
    fig.suptitle(title)
    return fig


# -- final layer (SALN Fig. 9-10) -----------------------------------------------------------------
def final_layer_figure(layers: dict[str, np.ndarray], title: str) -> Figure:
    """Per variant: the classifier weights as a heatmap (rows = classes) and their histogram."""
    fig = Figure(figsize=(11, 3.0 * len(layers)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(layers), 2, squeeze=False))
    for (heat, hist), (variant, weight) in zip(axes, layers.items(), strict=True):
        limit = float(np.abs(weight).max()) or 1.0
        image = heat.imshow(
            weight, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit, interpolation="nearest"
        )
        fig.colorbar(image, ax=heat)
        heat.set(title=f"{variant}: weights", xlabel="input feature", ylabel="class")
        hist.hist(weight.ravel(), bins=60, color="0.35")
        hist.set(title=f"{variant}: weight distribution", xlabel="weight", ylabel="count")
    fig.suptitle(title)
    return fig


# -- batch accumulation (ASSIST Appendix Fig. 6) ----------------------------------------------------
def accumulation_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch optimizer steps and discarded overflow per step from the cumulative counters."""
    steps = curves.groupby("run_id")["optim/steps"].diff().fillna(curves["optim/steps"])
    return curves.assign(
        steps_per_epoch=steps, overflow_per_step=curves["select/overflow"] / steps.where(steps > 0)
    )


def uses_accumulation(curves: pd.DataFrame) -> bool:
    if "select/raw_batches_per_step" not in curves:
        return False
    raw = curves["select/raw_batches_per_step"].dropna()
    return bool(
        (raw > 1).any() or (curves.get("select/overflow", pd.Series(dtype=float)) > 0).any()
    )


def accumulation_figure(runs: pd.DataFrame, curves: pd.DataFrame, title: str) -> Figure:
    means = seed_mean(accumulation_curves(curves), runs, [c for c, _ in ACCUMULATION_PANELS])
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, len(ACCUMULATION_PANELS))
    for ax, (column, label) in zip(axes, ACCUMULATION_PANELS, strict=True):
        for variant, frame in means.groupby("variant"):
            if (column, "mean") in frame:
                ax.plot(frame["epoch"], frame[(column, "mean")], label=variant)
        ax.set(xlabel="epoch", title=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


# -- everything for a set of runs -----------------------------------------------------------------
def first_seed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One completed run per variant (the lowest seed): the one a per-run figure shows."""
    return runs.sort_values("seed").drop_duplicates("variant").sort_values("variant")


def run_file_figures(group: str, runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The figures drawn from one run per variant's own files: kept images, final layer."""
    shown, paths = first_seed_runs(runs), []
    examples = {
        r.variant: ex for r in shown.itertuples() if (ex := load_example(r.run_dir)) is not None
    }
    examples = {variant: ex for variant, ex in examples.items() if not ex["kept"].all()}
    if examples:
        figure = selection_figure(examples, f"{group}: samples kept in one batch")
        paths += save(figure, out_dir, f"{group}_selection")
    layer_files = {r.variant: Path(r.run_dir) / rundir.FINAL_LAYER for r in shown.itertuples()}
    layers = {
        variant: np.load(path, allow_pickle=False)["weight"]
        for variant, path in layer_files.items()
        if path.exists()
    }
    if layers:
        paths += save(
            final_layer_figure(layers, f"{group}: final layer"), out_dir, f"{group}_final_layer"
        )
    return paths


def group_figures(
    group: str, runs: pd.DataFrame, curves: pd.DataFrame, out_dir: Path
) -> list[Path]:
    paths = []
    curves = with_train_seconds(curves[curves["run_id"].isin(runs["run_id"])])
    if len(curves):
        for x, xlabel, name in (
            ("epoch", "epoch", "epoch"),
            (TRAIN_SECONDS, "training seconds (train + select)", "time"),
        ):
            paths += save(
                curves_figure(runs, curves, x, xlabel, f"{group}: learning curves"),
                out_dir,
                f"{group}_curves_{name}",
            )
    paths += run_file_figures(group, runs[runs["run_dir"].fillna("") != ""], out_dir)
    if uses_accumulation(curves):
        paths += save(
            accumulation_figure(runs, curves, f"{group}: batch accumulation"),
            out_dir,
            f"{group}_accumulation",
        )
    return paths


def report_figures(runs: Runs, out_dir: Path) -> list[Path]:
    """Every figure for every group of completed runs; returns the files written."""
    done = runs.completed
    if "run_dir" not in done:  # W&B runs: curves only, the files live on the W&B side
        done = done.assign(run_dir="")
    paths = []
    for group, group_runs in done.groupby("group"):
        paths += group_figures(str(group), group_runs, runs.curves, out_dir)
    return paths


def run_figures(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """The figures of one finished run (PNG paths by name), for the runner to log to W&B:
    `tracking.log_images(run_figures(run_dir))`."""
    runs = load_runs([run_dir])
    paths = report_figures(runs, Path(out_dir) if out_dir else Path(run_dir) / "figures")
    return {p.stem: p for p in paths if p.suffix == ".png"}


def log_figures(paths: Iterable[Path], run=None) -> None:
    """Log PNG figures to a live W&B run (the current one by default); a no-op without one."""
    try:
        import wandb

        run = run or wandb.run
        if run is not None:
            run.log({p.stem: wandb.Image(str(p)) for p in paths if Path(p).suffix == ".png"})
    except Exception as err:  # figures are a bonus: never fail a run or a report over them
        log.warning("could not log figures to W&B: %s", err)
