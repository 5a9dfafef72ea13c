"""Numbers -> tables: the papers' tables with ours beside theirs, and a selector comparison.

Every table is first a numeric frame (mean, std, n, paper per cell) and only then text, so CSV
output keeps the numbers and Markdown / LaTeX show them as "mean ± std (n=k)". A cell with no
completed run is missing ("—"), never zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from saln_exp.report.load import Runs
from saln_exp.report.paper import TableSpec

MISSING = "—"
COMPARE_TITLE = "Selectors compared"
STATS = ("mean", "std", "n")
FORMATS = ("markdown", "csv", "latex")


@dataclass
class Table:
    """A table ready to print: a numeric frame, how to show each column, a title and a note."""

    title: str
    numbers: (
        pd.DataFrame
    )  # index: row labels; columns: (header, stat) with stat in mean/std/n/paper
    digits: dict[str, int]
    note: str = ""
    # header -> (column group, the column's name within it): LaTeX prints each group as a float
    # of its own (latex.py); a header not named here belongs to the table's one unnamed group
    groups: dict[str, tuple[str, str]] = field(default_factory=dict)


def metric_values(runs: pd.DataFrame, column: str, scale: float) -> pd.Series:
    """A runs column in the table's unit; all-missing when no run has it (no val split, say)."""
    values = runs[column] if column in runs else pd.Series(np.nan, index=runs.index)
    return pd.to_numeric(values, errors="coerce") * scale


def mean_std_n(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof 1) and count of every value column, per row key."""
    stats = frame.groupby(keys, dropna=False).agg(["mean", "std", "count"])
    return stats.rename(columns={"count": "n"}, level=1)


def paper_table(spec: TableSpec, runs: Runs) -> Table:
    """One paper table: the paper's rows (plus any extra rows we ran), ours next to theirs, from
    runs of the paper's recipe only."""
    beside = paper_runs(runs.runs, spec.experiment)
    done = beside.counted.assign(**{spec.row_label: beside.counted["paper_row"]})
    keys = list(spec.row_keys)
    values = pd.DataFrame(
        {m.header: metric_values(done, m.ours, m.scale) for m in spec.metrics}, index=done.index
    )
    ours = as_multiindex(mean_std_n(pd.concat([done[keys], values], axis=1), keys), keys)
    rows = pd.MultiIndex.from_tuples(spec.rows, names=keys)
    extra = [r for r in ours.index if r not in set(rows)] + [
        r for r in spec.paper.index if r not in set(rows)
    ]
    index = rows.append(pd.MultiIndex.from_tuples(extra, names=keys)) if extra else rows
    ours = ours.reindex(index)
    columns = {}
    for m in spec.metrics:
        for stat in STATS:
            columns[(m.header, stat)] = ours.get((m.header, stat), np.nan)
        paper = spec.paper[m.paper] if m.paper and m.paper in spec.paper else pd.Series(dtype=float)
        columns[(m.header, "paper")] = paper[~paper.index.duplicated()].reindex(index)
    numbers = pd.DataFrame(columns, index=index)
    numbers[[c for c in numbers.columns if c[1] == "n"]] = numbers[
        [c for c in numbers.columns if c[1] == "n"]
    ].fillna(0)
    note = " ".join([spec.note, *beside.notes()])
    groups = {m.header: (m.group, m.name or m.header) for m in spec.metrics if m.group}
    digits = {m.header: m.digits for m in spec.metrics}
    return Table(spec.title, numbers, digits, note.strip(), groups)


@dataclass
class PaperRuns:
    """The completed runs of one paper experiment, by what the report does with them."""

    counted: pd.DataFrame  # the paper's recipe, finite numbers: beside the paper's values
    trial: pd.DataFrame  # smoke=true or a debug/ file
    other_recipe: pd.DataFrame  # differ from the experiment file (`off_recipe` says how)
    non_finite: pd.DataFrame  # the paper's recipe, but an inf / nan value: flagged, not counted

    def notes(self) -> list[str]:
        """What the table's note says about the runs it does not count."""
        notes = []
        if len(self.trial):
            notes.append(f"{len(self.trial)} smoke/debug run(s) left out: they are not the "
                         "paper's recipe.")  # fmt: skip
        if len(self.other_recipe):
            keys = sorted({d.split(":")[0] for text in self.other_recipe["off_recipe"]
                           for d in text.split("; ")})  # fmt: skip
            notes.append(f"{len(self.other_recipe)} run(s) of another recipe left out (they "
                         f"differ in {', '.join(keys)}).")  # fmt: skip
        if len(self.non_finite):
            notes.append(non_finite_note(self.non_finite))
        return notes


def paper_runs(runs: pd.DataFrame, experiment: str) -> PaperRuns:
    """Sort the completed runs of `experiment`: only runs of its recipe (the experiment file)
    stand beside a paper's values, and only those with finite numbers enter a mean."""
    done = runs[(runs["status"] == "completed") & (runs["experiment"] == experiment)]
    trial = trial_runs(done)
    other = ~trial & (done["off_recipe"].fillna("") != "")
    flagged = ~trial & ~other & (done["non_finite"] != "")
    return PaperRuns(done[~trial & ~other & ~flagged], done[trial], done[other], done[flagged])


def non_finite_note(flagged: pd.DataFrame) -> str:
    keys = sorted({k for text in flagged["non_finite"] for k in text.split(", ")})
    return (f"{len(flagged)} run(s) flagged for non-finite values ({', '.join(keys)}: a diverged "
            "run?) and left out of the statistics.")  # fmt: skip


def trial_runs(runs: pd.DataFrame) -> pd.Series:
    """Runs made with smoke=true or a debug/ file: never shown beside a paper's values."""
    smoke = runs["smoke"].fillna(False).astype(bool) if "smoke" in runs else False
    debug = runs["debug"].notna() if "debug" in runs else False
    return pd.Series(smoke | debug, index=runs.index, dtype=bool)


def as_multiindex(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Row keys as tuples even when there is one key, so rows compare with the paper's layout."""
    if not isinstance(frame.index, pd.MultiIndex):
        frame.index = pd.MultiIndex.from_arrays([frame.index], names=keys)
    return frame


# -- formatting ------------------------------------------------------------------------------------
def format_spread(std: float, n: float, digits: int) -> str:
    """` ± std` where several runs made the mean, else nothing."""
    return f" ± {std:.{digits}f}" if n > 1 and pd.notna(std) else ""


def format_ours(mean: float, std: float, n: float, digits: int) -> str:
    if not n or pd.isna(mean):
        return MISSING
    return f"{mean:.{digits}f}{format_spread(std, n, digits)} (n={int(n)})"


def format_number(value: float, digits: int) -> str:
    return MISSING if pd.isna(value) else f"{value:.{digits}f}"


def text_frame(table: Table) -> pd.DataFrame:
    """The table as strings: per metric an `ours` column and, when the paper has one, a `paper` one."""
    out = pd.DataFrame(index=table.numbers.index)
    for header, digits in table.digits.items():
        cols = table.numbers[header]
        out[header] = [
            format_ours(*row, digits) for row in cols[list(STATS)].itertuples(index=False)
        ]
        if "paper" in cols and cols["paper"].notna().any():
            out[f"{header} (paper)"] = cols["paper"].map(lambda v, d=digits: format_number(v, d))
    return out.reset_index()


def numeric_frame(table: Table) -> pd.DataFrame:
    """The numbers with flat column names, for CSV."""
    flat = table.numbers.copy()
    flat.columns = [f"{header} {stat}" for header, stat in flat.columns]
    return flat.reset_index()


def slug(title: str) -> str:
    """A file and \\label name from a title: lower case, letters and digits joined by `_`."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "table"


def render(table: Table, fmt: str = "markdown") -> str:
    """The table as Markdown (title, table, note), CSV (numbers, one header row: what
    `pandas.read_csv` reads back as is) or LaTeX (a booktabs float per column group, each with caption and label)."""
    if fmt == "csv":
        return numeric_frame(table).to_csv(index=False)
    if fmt == "latex":
        from saln_exp.report.latex import render_latex  # latex.py builds on this module

        return render_latex(table)
    text = text_frame(table)
    note = f"\n\n{table.note}" if table.note else ""
    return f"### {table.title}\n\n{text.to_markdown(index=False, disable_numparse=True)}{note}\n"


# -- beyond the papers: compare any sweep's selectors at equal budgets --------------------------------
TRAIN_SECONDS = (
    "time/train_select_s"  # training time as SALN counts it: train + select, no evaluation
)
BACKPROP = "samples/backprop"
COMPARE_METRICS = (
    ("test acc", "test/acc", 4),
    ("best test acc", "best_test_acc", 4),
    ("test loss q0.5", "test/loss_q50", 3),
    ("test loss q0.9", "test/loss_q90", 3),
    ("test loss q0.99", "test/loss_q99", 3),
    ("train+select s", "train_time_s", 2),
    ("prepare s", "prepare_time_s", 2),
    ("samples back-prop", BACKPROP, 0),
    ("acc @ equal time", "acc_at_equal_time", 4),
    ("acc @ equal samples", "acc_at_equal_samples", 4),
    ("s to target", "time_to_target", 2),
)
# the comparison's column groups, each printed as a LaTeX float of its own (latex.py)
COMPARE_GROUPS = {
    "accuracy": ("test acc", "best test acc"),
    "test loss quantiles": ("test loss q0.5", "test loss q0.9", "test loss q0.99"),
    "cost": ("train+select s", "prepare s", "samples back-prop"),
    "accuracy at equal cost, time to target": ("acc @ equal time", "acc @ equal samples", "s to target"),
}  # fmt: skip


def with_train_seconds(curves: pd.DataFrame) -> pd.DataFrame:
    if TRAIN_SECONDS in curves or "time/train_s" not in curves:
        return curves
    return curves.assign(**{TRAIN_SECONDS: curves["time/train_s"] + curves["time/select_s"]})


def value_at(curves: pd.DataFrame, x: str, budgets: pd.Series, y: str = "test/acc") -> pd.Series:
    """Each run's `y` at its budget on axis `x`, linearly interpolated between epochs; NaN when
    the budget falls before the run's first evaluation or after its last."""

    def at(curve: pd.DataFrame) -> float:
        budget = budgets.get(curve.name, np.nan)
        curve = curve.dropna(subset=[x, y]).sort_values(x)
        if curve.empty or pd.isna(budget):
            return np.nan
        return float(np.interp(budget, curve[x], curve[y], left=np.nan, right=np.nan))

    if curves.empty:  # no run to interpolate (every completed run flagged as non-finite)
        return pd.Series(dtype=float)
    return curves.groupby("run_id")[[x, y]].apply(at)


def equal_budget_accuracy(runs: pd.DataFrame, curves: pd.DataFrame, x: str) -> pd.Series:
    """Test accuracy of every run at the smallest final budget among the runs of its group, so a
    selector that back-propagates 20% of each batch meets the others at the same cost."""
    final = curves.groupby("run_id")[x].max()
    budget_by_group = runs.assign(final=runs["run_id"].map(final)).groupby("group")["final"].min()
    budgets = runs.set_index("run_id")["group"].map(budget_by_group)
    return runs["run_id"].map(value_at(curves, x, budgets))


def first_reaching(curves: pd.DataFrame, x: str, target: float) -> pd.Series:
    """Per run, the smallest `x` at which test accuracy reached the target (NaN: never)."""
    hit = curves[curves["test/acc"] >= target]
    return hit.groupby("run_id")[x].min()


def budgets_note(runs: pd.DataFrame, curves: pd.DataFrame) -> str:
    final = curves.groupby("run_id")[[TRAIN_SECONDS, BACKPROP]].max()
    per_group = final.join(runs.set_index("run_id")["group"]).groupby("group").min()
    parts = [
        f"{g}: {row[TRAIN_SECONDS]:.2f} s, {row[BACKPROP]:,.0f} samples"
        for g, row in per_group.iterrows()
    ]
    return ("Equal budgets (smallest final budget of the group): " + "; ".join(parts) + "."
            if parts else "")  # fmt: skip


def compare_table(runs: Runs, target: float | None = None) -> Table:
    """One row per configuration (seeds pooled): accuracy, loss quantiles, cost, and accuracy at
    equal training time and equal back-propagated samples. A run with a non-finite number keeps
    its row (shown missing where it was the only run) and is left out of the statistics."""
    flagged = runs.non_finite
    done = pd.concat([runs.completed, flagged])  # flagged runs keep their row, not their numbers
    counted = done["non_finite"] == ""
    curves = with_train_seconds(runs.curves)
    curves = curves[curves["run_id"].isin(done.loc[counted, "run_id"])]
    if target is None:
        target = (
            float(done["target_acc"].dropna().iloc[0]) if done["target_acc"].notna().any() else 0.9
        )
    done["acc_at_equal_time"] = equal_budget_accuracy(done, curves, TRAIN_SECONDS)
    done["acc_at_equal_samples"] = equal_budget_accuracy(done, curves, BACKPROP)
    done["time_to_target"] = done["run_id"].map(first_reaching(curves, TRAIN_SECONDS, target))
    keys = ["group", "variant"] if done["group"].nunique() > 1 else ["variant"]
    values = pd.DataFrame(
        {h: metric_values(done, col, 1) for h, col, _ in COMPARE_METRICS}, index=done.index
    ).where(counted)  # a non-finite run counts in no mean, no spread and no n
    numbers = mean_std_n(pd.concat([done[keys], values], axis=1), keys)
    numbers = numbers.rename_axis(["group", "method"][-len(keys) :])
    note = (
        f"Mean ± std over seeds (n runs), final epoch unless stated. train+select s: training time "
        f"without evaluation. prepare s: one-time work before training (a reference model or "
        f"features, trained or loaded from the cache), not in train+select s. acc @ equal time / samples: test accuracy interpolated from each run's "
        f"curve at the group's smallest final budget. s to target: training seconds until test "
        f"accuracy first reached {target:g} (— = never; n counts the runs that did). A run whose first "
        f"evaluation comes after the equal budget shows — there. "
        f"{budgets_note(done[counted], curves)}"
    )
    if len(flagged):
        note += " " + non_finite_note(flagged)
    groups = {h: (group, h.removeprefix("test loss ")) for group, headers in COMPARE_GROUPS.items()
              for h in headers}  # fmt: skip
    return Table(COMPARE_TITLE, numbers, {h: d for h, _, d in COMPARE_METRICS}, note, groups)
