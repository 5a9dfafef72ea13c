"""`saln-report`: sweep or run directories (or a W&B project) -> tables, CSV and figures.

    saln-report outputs/sweeps/2026-01-01_12-00-00              # paper tables + comparison + figures
    saln-report outputs/sweeps/latest --table compare           # only the selector comparison
    saln-report outputs/sweeps/a outputs/sweeps/b --format latex
    saln-report --wandb my-entity/saln-exp:my-sweep-group       # online only

Everything is written to `<first dir>/report/` (or --out): tables.md or tables.tex (as printed),
tables/<title>.csv (each table's numbers, one header row), runs.csv (one row per run), curves.csv
(one row per run and epoch, with selector, dataset, model, seed and experiment) and figures/*.png|pdf.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from saln_exp.report.figures import report_figures
from saln_exp.report.latex import latex_file
from saln_exp.report.load import ReportError, Runs, load_runs, load_wandb, resolve_source, run_name
from saln_exp.report.noise import forgetting_figures, noise_table
from saln_exp.report.paper import all_specs, specs_for
from saln_exp.report.tables import (
    FORMATS,
    Table,
    compare_table,
    paper_runs,
    paper_table,
    render,
    slug,
    text_frame,
    trial_runs,
)
from saln_exp.rundir import SWEEP, RunFiles

SUFFIX = {"markdown": "md", "csv": "csv", "latex": "tex"}
TABLE_CHOICES = ("auto", "all", "compare", "paper", "noise")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    experiments = sorted({spec.experiment for spec in all_specs()})
    parser = argparse.ArgumentParser(
        prog="saln-report",
        description="Turn sweeps into the papers' tables (ours beside theirs), a comparison table and figures.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        help="sweep or run directories (outputs/sweeps/<date>, outputs/sweeps/latest)",
    )
    parser.add_argument(
        "--wandb",
        metavar="ENTITY/PROJECT[:GROUP]",
        help="read runs from W&B instead (needs network)",
    )
    parser.add_argument(
        "--table", default="auto", metavar="WHICH",
        help=f"auto (paper tables of the experiments present + comparison), paper, compare, all, noise (selector x prune against label-noise rate), or one experiment: {', '.join(experiments)}",
    )  # fmt: skip
    parser.add_argument("--format", default="markdown", choices=FORMATS)
    parser.add_argument("--out", type=Path, help="output directory (default: <first path>/report)")
    parser.add_argument(
        "--target-acc",
        type=float,
        help="test accuracy for time-to-target (default: eval.target_acc of the runs)",
    )
    parser.add_argument("--no-figures", action="store_true", help="tables and CSV only")
    parser.add_argument(
        "--log-loss", action="store_true", help="losses on a log scale in the curves"
    )
    parser.add_argument(
        "--to-wandb", metavar="[ENTITY/]PROJECT",
        help="also log the tables (as W&B tables) and figures (as images) to a W&B run of job type report",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.wandb):
        parser.error(
            "give run / sweep directories or --wandb ENTITY/PROJECT[:GROUP], not both or neither"
        )
    if args.table not in (*TABLE_CHOICES, *experiments):
        parser.error(
            f"--table must be one of {', '.join((*TABLE_CHOICES, *experiments))}, got {args.table!r}"
        )
    return args


def output_dir(args: argparse.Namespace) -> Path:
    """--out, else `<first path>/report` where that path is saln-exp's own (a sweep, a run, a
    folder of runs): a report is never written into someone else's folder unasked."""
    if args.out:
        return args.out
    if args.wandb:
        return Path("outputs") / "reports" / re.sub(r"[^A-Za-z0-9_.-]+", "_", args.wandb)
    source = resolve_source(args.paths[0])
    if not holds_our_runs(source):
        raise ReportError(
            f"{source} is not a sweep or run directory of saln-exp, so the report is not written "
            "into it; give --out <dir>"
        )
    return source / "report"


def holds_our_runs(folder: Path) -> bool:
    """A run directory saln-exp wrote, a sweep (Hydra's multirun.yaml, or sweep.json), or a
    folder whose every subfolder (but a report) is such a run."""
    if (folder / SWEEP).exists() or (folder / "multirun.yaml").exists():
        return True
    if not folder.is_dir() or RunFiles(folder).written_by_saln_exp():
        return folder.is_dir()
    subfolders = [
        d
        for d in folder.iterdir()
        if d.is_dir() and d.name != "report" and not d.name.startswith(".")
    ]
    return bool(subfolders) and all(RunFiles(d).written_by_saln_exp() for d in subfolders)


def select_tables(runs: Runs, which: str, target: float | None) -> list[Table]:
    """The tables `--table` asks for, from the runs at hand."""
    present = set(runs.runs["experiment"].dropna())
    if which == "noise":  # selector x prune rows, label-noise-rate columns
        return [noise_table(runs.runs, runs.curves)] if any_completed(runs) else []
    if which in ("auto", "all", "paper"):
        specs = all_specs() if which == "all" else specs_for(present)
    elif which == "compare":
        specs = []
    else:
        specs = specs_for({which})
    tables = [paper_table(spec, runs) for spec in specs]
    if which in ("auto", "all", "compare") and any_completed(runs):
        tables.append(compare_table(runs, target))
    return tables


def any_completed(runs: Runs) -> bool:
    return bool((runs.runs["status"] == "completed").any())


def status_line(runs: Runs) -> str | None:
    counts = runs.runs["status"].value_counts()
    unfinished = counts.drop("completed", errors="ignore")
    if unfinished.empty:
        return None
    detail = ", ".join(f"{status}: {n}" for status, n in unfinished.items())
    return f"note: {unfinished.sum()} of {len(runs.runs)} runs did not complete ({detail}); their cells show as missing"


CURVE_IDENTITY = ["selector", "dataset", "model", "seed", "experiment"]


def curves_with_identity(runs: Runs) -> pd.DataFrame:
    """curves.csv plots without joins: every epoch row says which run configuration it is."""
    identity = runs.runs[["run_id", *[c for c in CURVE_IDENTITY if c in runs.runs]]]
    curves = runs.curves.drop(columns=[c for c in CURVE_IDENTITY if c in runs.curves])
    return identity.merge(curves, on="run_id", how="right")


def honesty_line(runs: Runs, tables: list[Table]) -> str | None:
    paper_titles = {spec.title for spec in all_specs()}
    if not any(t.title in paper_titles for t in tables):
        return None
    n = int(trial_runs(runs.completed).sum())
    return (f"note: {n} run(s) made with smoke=true or debug=... are left out of the paper tables"
            if n else None)  # fmt: skip


def duplicates_line(runs: Runs) -> str | None:
    if not runs.duplicates:
        return None
    n = sum(map(len, runs.duplicates.values()))
    pairs = "; ".join(
        f"{', '.join(dropped)} (kept {kept})" for kept, dropped in runs.duplicates.items()
    )
    return (f"note: {n} run(s) left out as duplicates of another run's configuration and seed "
            f"(n counts distinct seeds): {pairs}")  # fmt: skip


def recipe_lines(runs: Runs, tables: list[Table]) -> list[str]:
    """Per paper experiment in the report and per difference: one line naming the runs left out
    of the paper's table because they are not its recipe."""
    titles = {t.title for t in tables}
    experiments = dict.fromkeys(s.experiment for s in all_specs() if s.title in titles)
    lines = []
    for experiment in experiments:
        other = paper_runs(runs.runs, experiment).other_recipe
        for differences, same in other.groupby("off_recipe", sort=True):
            names = ", ".join(same.apply(run_name, axis=1))
            lines.append(f"note: not {experiment}'s recipe, left out of its paper table "
                         f"({differences}): {names}")  # fmt: skip
    return lines


def non_finite_line(runs: Runs) -> str | None:
    flagged = runs.non_finite
    if not len(flagged):
        return None
    named = "; ".join(f"{run_name(row)} ({row['non_finite']})" for _, row in flagged.iterrows())
    return (f"note: {len(flagged)} run(s) with non-finite values flagged and left out of every "
            f"mean: {named}")  # fmt: skip


def upload_to_wandb(target: str, tables: list[Table], written: list[Path], out: Path) -> None:
    """The report as one W&B run: each table as a W&B table, each figure as an image. Offline
    (with the sync hint) where there is no key or no reachable server."""
    import wandb

    from saln_exp.tracking import server_reachable, wandb_mode, without_sdk_telemetry

    without_sdk_telemetry()

    entity, _, project = target.rpartition("/")
    mode = wandb_mode("auto")
    if mode == "online" and not server_reachable():
        print("note: W&B server not reachable; the report is logged offline", file=sys.stderr)
        mode = "offline"
    try:
        run = wandb.init(project=project, entity=entity or None, job_type="report",
                         name=f"report {out.parent.name}", dir=str(out), mode=mode,
                         settings=wandb.Settings(console="off", silent=True))  # fmt: skip
        for table in tables:
            run.log({f"tables/{slug(table.title)}": wandb.Table(dataframe=text_frame(table))})
        run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in written if p.suffix == ".png"})
        offline, sync_dir = run.settings.mode == "offline", Path(run.settings.sync_file).parent
        run.finish()
    except Exception as err:  # the report's files are written already; W&B is a copy
        raise ReportError(
            f"could not log the report to W&B ({type(err).__name__}: {err})"
        ) from None
    where = f"offline; upload it with: wandb sync {sync_dir}" if offline else "online"
    print(f"report logged to W&B project {target} ({where})", file=sys.stderr)


def write_outputs(runs: Runs, tables: list[Table], fmt: str, out: Path) -> list[Path]:
    """runs.csv, curves.csv, one CSV of numbers per table (tables/<title>.csv), and the printed
    tables as tables.md or tables.tex."""
    (out / "tables").mkdir(parents=True, exist_ok=True)
    paths = [out / "runs.csv", out / "curves.csv"]
    runs.runs.to_csv(paths[0], index=False)
    curves_with_identity(runs).to_csv(paths[1], index=False)
    for table in tables:
        paths.append(out / "tables" / f"{slug(table.title)}.csv")
        paths[-1].write_text(render(table, "csv"))
    if fmt != "csv":
        paths.append(out / f"tables.{SUFFIX[fmt]}")
        text = latex_file(tables) if fmt == "latex" else "\n".join(render(t, fmt) for t in tables)
        paths[-1].write_text(text)
    return paths


def _printed(table: Table, fmt: str) -> str:
    """On the terminal a CSV table gets its title above it; the files hold the bare CSV."""
    return f"# {table.title}\n{render(table, fmt)}" if fmt == "csv" else render(table, fmt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = output_dir(args)
        runs = load_wandb(args.wandb) if args.wandb else load_runs(args.paths)
        tables = select_tables(runs, args.table, args.target_acc)
        if not tables:
            raise ReportError(
                f"no table to print: --table {args.table} matches none of the runs' experiments"
            )
        print("\n".join(_printed(t, args.format) for t in tables))
        written = write_outputs(runs, tables, args.format, out)
        if not args.no_figures:
            written += report_figures(runs, out / "figures", log_loss=args.log_loss)
            if args.table == "noise":
                written += forgetting_figures(runs.runs, out / "figures")
        if args.to_wandb:
            upload_to_wandb(args.to_wandb, tables, written, out)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    notes = [duplicates_line(runs), status_line(runs), honesty_line(runs, tables),
             *recipe_lines(runs, tables), non_finite_line(runs)]  # fmt: skip
    for note in filter(None, notes):
        print(note, file=sys.stderr)
    print(f"report: {len(written)} files in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
