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
import textwrap
from dataclasses import dataclass
from itertools import cycle, pairwise
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from saln_exp.images import DROPPED_RGB, KEPT_RGB, load_example, load_final_layer, montage
from saln_exp.report.load import Runs
from saln_exp.report.style import file_stem, selector_style, setting_title
from saln_exp.report.tables import TRAIN_SECONDS, with_train_seconds

log = logging.getLogger(__name__)

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
    stem = file_stem(name)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=110)
    fig.savefig(paths[1])
    return paths


def seed_mean(curves: pd.DataFrame, runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per variant and epoch: mean and std over seeds of `columns` (x values averaged too)."""
    labelled = curves.merge(runs[["run_id", "variant"]], on="run_id")
    present = [c for c in columns if c in labelled]
    return labelled.groupby(["variant", "epoch"])[present].agg(["mean", "std"]).reset_index()


# -- colours, markers, axes -------------------------------------------------------------------------
def variant_styles(runs: pd.DataFrame) -> dict[str, tuple[tuple, str]]:
    """variant -> (colour, marker): the colour and marker of the variant's selector (style.py),
    lightened for the second, third ... variant of one selector (two filter ratios, say)."""
    from matplotlib.colors import to_rgb

    styles, seen = {}, {}
    selectors = runs.groupby("variant")["selector"].first() if "selector" in runs else {}
    for variant in sorted(runs["variant"].unique()):
        selector = selectors.get(variant) if len(selectors) else None
        colour, marker = selector_style(selector)
        k = seen[selector] = seen.get(selector, -1) + 1
        rgb = np.array(to_rgb(colour))
        styles[variant] = (tuple(rgb + (1 - rgb) * min(0.3 * k, 0.7)), marker)
    return styles


def seed_counts(runs: pd.DataFrame) -> dict[str, int]:
    return runs.groupby("variant")["run_id"].nunique().to_dict()


def epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def band_handle():
    from matplotlib.patches import Patch

    return Patch(color="0.5", alpha=0.25, label="band: test mean ± std over the n seeds")


def fit(text: str, width_in: float, fontsize: float) -> str:
    """`text` wrapped into lines no wider than `width_in` inches at `fontsize` points (DejaVu
    Sans averages about 0.6 em a character), so no title runs past its panel or off the figure."""
    chars = max(12, int(width_in * 72 / (0.62 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def suptitle(fig: Figure, title: str) -> None:
    size = 12  # matplotlib's figure title size ("large")
    fig.suptitle(fit(title, fig.get_figwidth() - 0.2, size), fontsize=size)


# -- time axes: plain seconds or minutes, never SI prefixes ("500m" reads as 500 minutes) ----------
def time_unit(seconds: pd.Series | np.ndarray) -> tuple[float, str]:
    """(divisor, unit): seconds up to ten minutes, minutes beyond."""
    longest = np.nanmax(np.asarray(seconds, dtype=float), initial=0.0)
    return (60.0, "minutes") if longest > 600 else (1.0, "seconds")


def plain_ticks(axis) -> None:
    """Tick labels as plain numbers: no offset, no scientific notation, no SI prefix."""
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


# -- curves ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LegendLayout:
    loc: str
    ncols: int
    fontsize: float
    extra_height: float  # inches added below the panels for a legend placed there


def legend_layout(entries: int) -> LegendLayout:
    """Up to 22 entries fit beside the panels; more go below them in columns of at most 8 rows
    (a 30-method comparison would otherwise lose its last entries off the figure)."""
    if entries <= 22:
        return LegendLayout("outside right upper", 1, 8, 0.0)
    ncols = min(4, -(-entries // 8))
    return LegendLayout("outside lower center", ncols, 7.5, 0.22 * -(-entries // ncols))


def curves_figure(
    runs: pd.DataFrame, curves: pd.DataFrame, x: str, title: str, log_loss: bool = False
) -> Figure:
    """Accuracy and mean loss of every split against `x` (`epoch`, or training seconds shown in
    seconds or minutes), one colour (and marker) per variant; the test split's band is its
    mean ± std over seeds."""
    splits = [s for s in SPLIT_STYLES if f"{s}/acc" in curves and curves[f"{s}/acc"].notna().any()]
    ys = [f"{s}/{m}" for s in splits for m in ("acc", "loss_mean")]
    means = seed_mean(curves, runs, [x, *ys] if x != "epoch" else ys)
    divisor, unit = time_unit(curves[x]) if x != "epoch" else (1.0, "")
    xlabel = "epoch" if x == "epoch" else f"training {unit} (train + select)"
    styles, counts = variant_styles(runs), seed_counts(runs)
    legend = legend_layout(len(styles) + len(splits) + 1)
    fig = Figure(figsize=(11 if legend.loc.endswith("upper") else 12, 4.2 + legend.extra_height),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(1, 2)
    for variant, frame in means.groupby("variant"):
        colour, marker = styles[variant]
        xs = frame["epoch"] if x == "epoch" else frame[(x, "mean")] / divisor
        every = max(1, len(frame) // 8)
        for ax, metric in zip(axes, ("acc", "loss_mean"), strict=True):
            for split in splits:
                y, spread = (
                    frame[(f"{split}/{metric}", "mean")],
                    frame[(f"{split}/{metric}", "std")].fillna(0),
                )
                ax.plot(xs, y, SPLIT_STYLES[split], color=colour, marker=marker, markevery=every,
                        markersize=4)  # fmt: skip
                if split == "test":
                    ax.fill_between(
                        xs, y - spread, y + spread, color=colour, alpha=0.15, linewidth=0
                    )
    for ax, ylabel in zip(axes, ("accuracy", "mean cross-entropy loss"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if x == "epoch":
            epoch_axis(ax)
        else:
            plain_ticks(ax.xaxis)
    if log_loss:
        axes[1].set_yscale("log")
    handles = [Line2D([], [], color=c, marker=m, label=f"{v} (n={counts[v]})")
               for v, (c, m) in styles.items()]  # fmt: skip
    handles += [Line2D([], [], color="0.3", linestyle=SPLIT_STYLES[s], label=s) for s in splits]
    handles.append(band_handle())
    fig.legend(handles=handles, loc=legend.loc, ncols=legend.ncols, fontsize=legend.fontsize)
    suptitle(fig, title)
    return fig


def noise_facets_figure(
    runs: pd.DataFrame, curves: pd.DataFrame, title: str, log_loss: bool = False
) -> Figure:
    """A label-noise sweep: one panel per noise rate (test accuracy per epoch), colour by selector,
    line style by pruning method, instead of every configuration in one axis."""
    rates = sorted(runs["noise_rate"].dropna().unique())
    prunes = sorted(runs["prune"].fillna("none").unique())
    dashes = dict(zip(prunes, cycle(["-", "--", ":", "-."])))
    labelled = curves.merge(runs[["run_id", "selector", "prune", "noise_rate"]], on="run_id")
    fig = Figure(figsize=(3.6 * len(rates) + 2, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(rates), sharey=True))
    for ax, rate in zip(axes, rates, strict=True):
        at = labelled[labelled["noise_rate"] == rate]
        for (selector, prune), frame in at.groupby(["selector", "prune"], dropna=False):
            mean = frame.groupby("epoch")["test/acc"].agg(["mean", "std"]).reset_index()
            colour, marker = selector_style(selector)
            ax.plot(mean["epoch"], mean["mean"], dashes[prune if isinstance(prune, str) else "none"],
                    color=colour, marker=marker, markevery=max(1, len(mean) // 6), markersize=4)  # fmt: skip
            ax.fill_between(mean["epoch"], mean["mean"] - mean["std"].fillna(0),
                            mean["mean"] + mean["std"].fillna(0), color=colour, alpha=0.12, linewidth=0)  # fmt: skip
        ax.set(title=f"label noise {rate:g}", xlabel="epoch")
        epoch_axis(ax)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    handles = [Line2D([], [], color=selector_style(s)[0], marker=selector_style(s)[1], label=str(s))
               for s in sorted(runs["selector"].dropna().unique())]  # fmt: skip
    handles += [
        Line2D([], [], color="0.3", linestyle=dashes[p], label=f"prune={p}") for p in prunes
    ]
    handles.append(band_handle())
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    suptitle(fig, title)
    return fig


# -- cost against accuracy ------------------------------------------------------------------------
PARETO_AXES = (("train_time_s", "training {unit} (train + select)"),
               ("samples_backprop", "samples back-propagated"))  # fmt: skip


def pareto_front(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (lower cost, higher accuracy), by cost."""
    order = np.lexsort((-acc, cost))
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.array(front, dtype=int)


def pareto_figure(runs: pd.DataFrame, title: str) -> Figure:
    """Final test accuracy against training seconds and against back-propagated samples: each
    seed's run as a small point and the mean over seeds as a large one (cost bars: ± std), in
    the method's fixed colour and marker, the Pareto front of the means joined. Seeds are drawn
    one by one because a run that collapses makes a mean ± std bar meaningless (it crosses 1)."""
    from matplotlib.ticker import EngFormatter

    divisor, unit = time_unit(runs["train_time_s"])
    runs = runs.assign(train_time_s=runs["train_time_s"] / divisor)
    styles, counts = variant_styles(runs), seed_counts(runs)
    legend = legend_layout(len(styles) + 1)
    fig = Figure(figsize=(11 if legend.loc.endswith("upper") else 12, 4.4 + legend.extra_height),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(1, 2, sharey=True)
    acc_column = "final_test_acc" if "final_test_acc" in runs else "test/acc"
    stats = runs.groupby("variant")[[acc_column, *(c for c, _ in PARETO_AXES)]].agg(["mean", "std"])
    for ax, (column, label) in zip(axes, PARETO_AXES, strict=True):
        cost, acc = (
            stats[(column, "mean")].to_numpy(float),
            stats[(acc_column, "mean")].to_numpy(float),
        )
        for i, variant in enumerate(stats.index):
            colour, marker = styles[variant]
            seeds = runs[runs["variant"] == variant]
            ax.scatter(seeds[column], seeds[acc_column], color=colour, marker=marker, s=14,
                       alpha=0.45, linewidths=0)  # fmt: skip
            ax.errorbar(cost[i], acc[i], xerr=np.nan_to_num(stats[(column, "std")].iloc[i]),
                        color=colour, marker=marker, markersize=8, capsize=3, linestyle="none",
                        markeredgecolor="black", markeredgewidth=0.4,
                        label=f"{variant} (n={counts[variant]})")  # fmt: skip
        ok = np.isfinite(cost) & np.isfinite(acc)
        front = np.flatnonzero(ok)[pareto_front(cost[ok], acc[ok])]
        ax.plot(
            cost[front], acc[front], "--", color="0.5", linewidth=1, label="Pareto front (means)"
        )
        ax.set(xlabel=label.format(unit=unit))
        if column == "train_time_s":
            plain_ticks(ax.xaxis)
        else:  # counts: 1k, 2.5M read at a glance
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final test accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc=legend.loc, ncols=legend.ncols, fontsize=legend.fontsize)
    suptitle(fig, title)
    return fig


# -- selection examples (SALN Fig. 7-8) -------------------------------------------------------------
SELECTION_COLUMNS = 3  # panels per row: many selectors wrap into rows instead of one long strip
SELECTION_PANEL_IN = 3.6


def selection_figure(
    examples: dict[str, dict], title: str, seeds: dict[str, object] | None = None
) -> Figure:
    """One panel per variant, three to a row: the example batch, kept (blue frame) and dropped
    (orange frame, faded), each image with its class label; the panel says selector, seed and
    batch."""
    from matplotlib.patches import Patch

    ncols = min(SELECTION_COLUMNS, len(examples))
    nrows = -(-len(examples) // ncols)
    fig = Figure(figsize=(SELECTION_PANEL_IN * ncols + 0.3, (SELECTION_PANEL_IN + 0.6) * nrows + 0.9),
                 layout="constrained")  # fmt: skip
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes[len(examples) :]:
        ax.set_visible(False)
    for ax, (variant, ex) in zip(axes, examples.items(), strict=False):
        kept, images = ex["kept"].numpy().astype(bool), ex["images"].numpy()
        ax.imshow(montage(images, kept), interpolation="nearest")
        cols, (h, w) = int(np.ceil(np.sqrt(len(kept)))), images.shape[2:]
        for i, label in enumerate(ex["labels"].numpy()):
            row, col = divmod(i, cols)
            ax.text(col * (w + 4) + 3, row * (h + 4) + 3, str(int(label)), fontsize=6, va="top",
                    color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 0.5, "linewidth": 0})  # fmt: skip
        seed = (seeds or {}).get(variant)
        name = variant if str(variant) == str(ex["selector"]) else f"{variant} ({ex['selector']})"
        panel = f"{name}, seed {seed}, batch {ex['batch']}:\nkept {kept.sum()} of {len(kept)}"
        ax.set_title(fit(panel, SELECTION_PANEL_IN, 9), fontsize=9)
        ax.axis("off")
    fig.legend(handles=[Patch(color=KEPT_RGB, label="kept (trained on)"),
                        Patch(color=DROPPED_RGB, label="dropped (faded)")],
               loc="outside lower center", ncols=2, fontsize=9)  # fmt: skip
    suptitle(fig, f"{title} (number: class label)")
    return fig


# -- final layer (SALN Fig. 9-10) -----------------------------------------------------------------
def final_layer_figure(layers: dict[str, np.ndarray], title: str) -> Figure:
    """Per variant: the classifier weights as a heatmap (rows = classes) and their histogram."""
    fig = Figure(figsize=(11, 3.0 * len(layers)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(layers), 2, squeeze=False))
    # one colour scale and one histogram range for all variants, so the panels compare
    limit = max(float(np.abs(w).max()) for w in layers.values()) or 1.0
    bins = np.linspace(-limit, limit, 61)
    for (heat, hist), (variant, weight) in zip(axes, layers.items(), strict=True):
        image = heat.imshow(
            weight, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit, interpolation="nearest"
        )
        fig.colorbar(image, ax=heat, label="weight")
        heat.set(title=fit(f"{variant}: weights", 4.5, 12), xlabel="input feature", ylabel="class")
        hist.hist(weight.ravel(), bins=bins, color="0.35")
        hist.set(title=fit(f"{variant}: weight distribution", 4.5, 12), xlabel="weight",
                 ylabel="count")  # fmt: skip
    suptitle(fig, title)
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


def nesting(lines: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    """Per line, in drawing order: how many lines drawn after it run along one of its segments
    (or sit on its one point). A line is drawn that many steps wider, so lines that coincide show
    as nested stripes, every colour visible, instead of the last one hiding the others."""

    def pieces(xs: np.ndarray, ys: np.ndarray) -> set:
        points = list(zip(np.round(xs, 9), np.round(ys, 9), strict=True))
        return set(pairwise(points)) if len(points) > 1 else set(points)

    shapes = {variant: pieces(*line) for variant, line in lines.items()}
    order = list(shapes)
    return {
        v: sum(bool(shapes[v] & shapes[w]) for w in order[i + 1 :]) for i, v in enumerate(order)
    }


def accumulation_figure(runs: pd.DataFrame, curves: pd.DataFrame, title: str) -> Figure:
    """ASSIST's accumulation statistics per epoch, mean over seeds, one panel each; lines that
    coincide (every selector without accumulation draws 1 raw batch per step) are nested."""
    means = seed_mean(accumulation_curves(curves), runs, [c for c, _ in ACCUMULATION_PANELS])
    styles, counts = variant_styles(runs), seed_counts(runs)
    legend = legend_layout(len(styles))
    fig = Figure(figsize=(11, 6.4 + legend.extra_height), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (column, label) in zip(axes, ACCUMULATION_PANELS, strict=True):
        lines = {
            variant: (frame["epoch"].to_numpy(float), frame[(column, "mean")].to_numpy(float))
            for variant, frame in means.groupby("variant")
            if (column, "mean") in frame
        }
        for variant, k in nesting(lines).items():
            colour, marker = styles[variant]
            ax.plot(*lines[variant], color=colour, marker=marker, linewidth=1.5 + 3 * k,
                    markersize=4 + 3.5 * k, markevery=max(1, len(lines[variant][0]) // 8))  # fmt: skip
        ax.margins(y=0.15)  # room for a nest of lines at the top or bottom of the panel
        ax.set(xlabel="epoch", ylabel=label.split(" (")[0], title=fit(label, 4.5, 12))
        epoch_axis(ax)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker=m, label=f"{v} (n={counts[v]})")
               for v, (c, m) in styles.items()]  # fmt: skip
    fig.legend(handles=handles, loc=legend.loc, ncols=legend.ncols, fontsize=legend.fontsize,
               title="mean over n seeds;\nlines that coincide\nare drawn nested",
               title_fontsize=legend.fontsize)  # fmt: skip
    suptitle(fig, title)
    return fig


# -- everything for a set of runs -----------------------------------------------------------------
def first_seed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One completed run per variant (the lowest seed): the one a per-run figure shows."""
    return runs.sort_values("seed").drop_duplicates("variant").sort_values("variant")


def run_file_figures(setting: str, runs: pd.DataFrame, out_dir: Path, group: str) -> list[Path]:
    """The figures drawn from one run per variant's own files: kept images, final layer."""
    shown, paths = first_seed_runs(runs), []
    examples = {
        r.variant: ex for r in shown.itertuples() if (ex := load_example(r.run_dir)) is not None
    }
    examples = {variant: ex for variant, ex in examples.items() if not ex["kept"].all()}
    if examples:
        seeds = {r.variant: r.seed for r in shown.itertuples()}
        figure = selection_figure(examples, f"{setting}: samples kept in one batch", seeds)
        paths += save(figure, out_dir, f"{group}_selection")
    layers = {
        r.variant: layer
        for r in shown.itertuples()
        if (layer := load_final_layer(r.run_dir)) is not None
    }
    if layers:
        paths += save(
            final_layer_figure(layers, f"{setting}: final layer"), out_dir, f"{group}_final_layer"
        )
    return paths


def group_figures(
    group: str, runs: pd.DataFrame, curves: pd.DataFrame, out_dir: Path, log_loss: bool = False
) -> list[Path]:
    paths = []
    setting = setting_title(list(runs["dataset"]), list(runs["model"]))
    curves = with_train_seconds(curves[curves["run_id"].isin(runs["run_id"])])
    noise_sweep = "noise_rate" in runs and runs["noise_rate"].nunique() > 1
    if len(curves) and noise_sweep:
        figure = noise_facets_figure(runs, curves, f"{setting}: test accuracy by label-noise rate")
        paths += save(figure, out_dir, f"{group}_curves_noise")
    elif len(curves):
        for x, name, what in (
            ("epoch", "epoch", "accuracy and loss per epoch"),
            (TRAIN_SECONDS, "time", "accuracy and loss against training time"),
        ):
            figure = curves_figure(runs, curves, x, f"{setting}: {what}", log_loss)
            paths += save(figure, out_dir, f"{group}_curves_{name}")
    if runs["variant"].nunique() > 1 and {"train_time_s", "samples_backprop"} <= set(runs):
        figure = pareto_figure(
            runs, f"{setting}: accuracy against cost (small: each seed; large: mean)"
        )
        paths += save(figure, out_dir, f"{group}_pareto")
    paths += run_file_figures(setting, runs[runs["run_dir"].fillna("") != ""], out_dir, group)
    if uses_accumulation(curves):
        paths += save(
            accumulation_figure(runs, curves, f"{setting}: batch accumulation"),
            out_dir,
            f"{group}_accumulation",
        )
    return paths


def report_figures(runs: Runs, out_dir: Path, log_loss: bool = False) -> list[Path]:
    """Every figure for every group of completed runs; returns the files written."""
    done = runs.completed
    if "run_dir" not in done:  # W&B runs: curves only, the files live on the W&B side
        done = done.assign(run_dir="")
    paths = []
    for group, group_runs in done.groupby("group"):
        paths += group_figures(str(group), group_runs, runs.curves, out_dir, log_loss)
    return paths
