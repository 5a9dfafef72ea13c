"""saln-report: tables built from a small real sweep agree with the runs' own files, missing runs
show as missing, every figure is a readable image, and W&B offline fails with one line."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_cfg, run_cli
from saln_exp.images import DROPPED_RGB, KEPT_RGB
from saln_exp.report import cli
from saln_exp.report.figures import montage
from saln_exp.report.latex import latex_escape, latex_file
from saln_exp.report.load import load_runs, resolve_source
from saln_exp.report.paper import all_specs, paper_values, specs_for
from saln_exp.report.tables import (
    MISSING,
    Table,
    compare_table,
    equal_budget_accuracy,
    paper_table,
    render,
)

SELECTORS = ("none", "saln")
LABELS = {"none": "standard", "saln": "saln"}  # SALN's names: the sweep is labelled saln_pets
PAPER_ROWS = "paper_rows={" + ",".join(f"{k}:{v}" for k, v in LABELS.items()) + "}"
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real sweep on the offline default: 2 selectors x 2 seeds, 2 epochs, with a val split.
    It is labelled as the SALN Pet experiment so that it also fills a paper table."""
    sweep_dir = tmp_path_factory.mktemp("report") / "sweep"
    result = run_cli(
        "-m", f"selector={','.join(SELECTORS)}", f"seed={','.join(map(str, SEEDS))}",
        "trainer.epochs=2", "dataset.val_fraction=0.2", "experiment_name=saln_pets", PAPER_ROWS,
        "logger=none", "trainer.progress=false", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def summaries(sweep_dir: Path) -> pd.DataFrame:
    """What each run says about itself: summary.json plus the last line of metrics.jsonl."""
    rows = []
    for path in sweep_dir.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        last = json.loads((path.parent / "metrics.jsonl").read_text().splitlines()[-1])
        rows.append({**{k: v for k, v in summary.items() if k != "config"}, **last})
    return pd.DataFrame(rows)


def mean_std(values: pd.Series) -> tuple[float, float]:
    values = list(values)
    return statistics.mean(values), statistics.stdev(values)


def give_config(run_dir: Path, tmp_path: Path, *overrides: str, seed: int = 0) -> dict:
    """Make a real run's directory say it ran `saln-train <overrides>`: its config.yaml and
    summary.json's copy become the config that command resolves to (as the runner writes it:
    with the run's seed and the selector file chosen). Its numbers stay the real run's."""
    cfg = compose_cfg(tmp_path, *overrides)
    cfg.seed = seed
    choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("selector=")), None)
    cfg.selector_choice = choice or cfg.selector.name
    config = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "config": config}))
    return config


def as_saln_pets_recipe(sweep_dir: Path, tmp_path: Path) -> Path:
    """A copy of the sweep whose runs say they ran the SALN Pet experiment file's recipe."""
    copy = tmp_path / "recipe"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("report", "*.pt"))
    selector_file = {"none": "none", "saln": "saln_paper"}
    for path in copy.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        give_config(path.parent, tmp_path, "experiment=saln_pets",
                    f"selector={selector_file[summary['selector']]}", seed=summary["seed"])  # fmt: skip
    return copy


@pytest.mark.slow
def test_compare_table_matches_the_runs(sweep):
    truth = summaries(sweep)
    numbers = compare_table(load_runs([sweep])).numbers
    for selector in SELECTORS:
        runs = truth[truth["selector"] == selector]
        for header, column in (
            ("test acc", "final_test_acc"),
            ("train+select s", "train_time_s"),
            ("test loss q0.9", "test/loss_q90"),
        ):
            mean, std = mean_std(runs[column])
            assert numbers.loc[LABELS[selector], (header, "mean")] == pytest.approx(mean)
            assert numbers.loc[LABELS[selector], (header, "std")] == pytest.approx(std)
            assert numbers.loc[LABELS[selector], (header, "n")] == len(SEEDS)


@pytest.mark.slow
def test_paper_table_puts_ours_beside_the_papers_and_missing_as_missing(sweep, tmp_path):
    truth = summaries(sweep)
    runs = load_runs([as_saln_pets_recipe(sweep, tmp_path)])
    accuracy = next(
        s for s in specs_for({"saln_pets"}) if "accuracy (%)" in s.title and "test" not in s.title
    )
    table = paper_table(accuracy, runs)
    standard = truth[truth["selector"] == "none"]
    mean, std = mean_std(standard["final_val_acc"] * 100)
    assert table.numbers.loc[("standard",), ("val", "mean")] == pytest.approx(mean)
    assert table.numbers.loc[("standard",), ("val", "std")] == pytest.approx(std)
    paper = paper_values("saln_tables").set_index(["dataset", "method"])
    assert (
        table.numbers.loc[("standard",), ("val", "paper")]
        == paper.loc[("pets", "standard"), "val_acc"]
    )

    text = render(table)
    standard_row = next(line for line in text.splitlines() if line.startswith("| standard"))
    assert f"{mean:.2f} ± {std:.2f} (n=2)" in standard_row
    jest_row = next(line for line in text.splitlines() if line.startswith("| jest"))
    cells = [c.strip() for c in jest_row.strip("|").split("|")]
    assert cells == ["jest", MISSING, "79.59", MISSING, "75.54"]  # no jest run: ours missing, not 0
    uniform_row = next(line for line in text.splitlines() if line.startswith("| uniform"))
    assert set(c.strip() for c in uniform_row.strip("|").split("|")[1:]) == {MISSING}


@pytest.mark.slow
def test_unfinished_runs_are_missing_not_zero(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("report", "*.pt"))
    identities = {p.parent: json.loads(p.read_text()) for p in copy.glob("*/summary.json")}
    failed = next(d for d, s in identities.items() if (s["selector"], s["seed"]) == ("saln", 1))
    (failed / "summary.json").unlink()
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    runs = load_runs([copy])
    assert (runs.runs["status"] == "failed").sum() == 1
    numbers = compare_table(runs).numbers
    assert numbers.loc["saln", ("test acc", "n")] == 1
    assert pd.isna(numbers.loc["saln", ("test acc", "std")])
    text = render(compare_table(runs))
    assert "(n=1)" in next(line for line in text.splitlines() if line.startswith("| saln"))


@pytest.mark.slow
def test_cli_writes_tables_csv_and_readable_figures(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SALN Tables 1, 5: Oxford-IIIT Pet, accuracy (%)" in printed
    assert "Selectors compared" in printed
    assert (out / "tables.md").read_text().strip() == printed.strip()
    runs_csv = pd.read_csv(out / "runs.csv")
    assert len(runs_csv) == len(SELECTORS) * len(SEEDS)
    assert {
        "selector",
        "seed",
        "dataset",
        "model",
        "experiment",
        "filter_ratio",
        "batch_size",
        "test/acc",
    } <= set(runs_csv)
    pngs, pdfs = sorted(out.glob("figures/*.png")), sorted(out.glob("figures/*.pdf"))
    names = {p.stem for p in pngs}
    assert names == {
        f"saln_pets_{kind}"
        for kind in ("curves_epoch", "curves_time", "selection", "final_layer", "pareto")
    }
    assert {p.stem for p in pdfs} == names
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.size[0] > 0 and image.size[1] > 0
    for pdf in pdfs:
        assert pdf.stat().st_size > 1000 and pdf.read_bytes().startswith(b"%PDF")


# The plainest A4 document (default `article` margins: a 345 pt text width, the narrowest
# one-column page) with booktabs only; a reference line at \footnotesize in both fonts a table uses.
LATEX_DOC = (
    "\\documentclass[a4paper]{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
    "{\\footnotesize REFERENCE \\texttt{REFERENCE}}\n\n"
)
WORD = re.compile(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)<')


def compile_latex(tex: str, workdir: Path) -> tuple[Path, str]:
    """Compile `tex` (table floats) in LATEX_DOC with pdflatex; fail with LaTeX's log. Returns
    the PDF and the log."""
    doc = workdir / "doc.tex"
    doc.write_text(LATEX_DOC + tex + "\n\\end{document}\n")
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=workdir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    return workdir / "doc.pdf", (workdir / "doc.log").read_text(errors="replace")


def pdf_words(pdf: Path) -> list[tuple[str, float, float]]:
    """(text, width, height) in pt of every word on every page, as pdftotext places them: a
    word's height is its font's size as printed (scaling included)."""
    xml = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return [(text, float(x1) - float(x0), float(y1) - float(y0))
            for x0, y0, x1, y1, text in WORD.findall(xml)]  # fmt: skip


def assert_printable(tex: str, workdir: Path) -> None:
    """Every table reads on an A4 page: nothing scaled, turned or set below \footnotesize in the
    source; compiled, no table wider than the text, every word upright and at least as tall as
    the same fonts at \footnotesize."""
    for shrink in ("\\resizebox", "\\scalebox", "sideways", "landscape", "\\scriptsize", "\\tiny"):
        assert shrink not in tex
    pdf, log = compile_latex(tex, workdir)
    assert "Overfull \\hbox" not in log and "Float too large" not in log
    words = pdf_words(pdf)
    smallest = min(h for text, _, h in words if text == "REFERENCE")
    sideways = [text for text, w, h in words if len(text) >= 4 and w <= h]
    assert not sideways, sideways[:5]
    small = [(text, round(h, 2)) for text, _, h in words if h < smallest - 0.01]
    assert not small, f"smaller than \\footnotesize ({smallest:.2f} pt): {small[:5]}"


def floats(tex: str) -> dict[str, str]:
    """Caption -> the float's source."""
    found = re.findall(r"\\begin\{table\}.*?\\end\{table\}", tex, re.S)
    return {re.search(r"\\caption\{(.*?)\}\n", f)[1]: f for f in found}


needs_latex = pytest.mark.skipif(
    shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
    reason="pdflatex or pdftotext not installed (.ci/run installs them)",
)


@pytest.mark.slow
@needs_latex
def test_every_latex_table_prints_on_an_a4_page_at_footnotesize(sweep, tmp_path, capsys):
    """All paper tables (filled or empty) and the comparison, as `--format latex` writes them:
    one float per column group (ASSIST: the thesis' accuracy / mean loss / q0.9 loss / worst
    loss), n once per row, keys left and numbers right."""
    source, out = as_saln_pets_recipe(sweep, tmp_path), tmp_path / "report"
    assert cli.main([str(source), "--out", str(out), "--format", "latex", "--no-figures",
                     "--table", "all"]) == 0  # fmt: skip
    tex = (out / "tables.tex").read_text()
    captions = floats(tex)
    labels = re.findall(r"\\label\{(tab:[^}]*)\}", tex)
    assert len(labels) == len(set(labels)) == len(captions) == tex.count("\\begin{table}")
    for spec in all_specs():
        if spec.title.startswith("ASSIST"):
            groups = ("accuracy", "mean loss", "q0.9 loss", "worst loss")
            assert {f"{latex_escape(spec.title)} ({g})" for g in groups} <= set(captions)
        else:
            assert latex_escape(spec.title) in captions
    assert "Selectors compared (accuracy)" in captions
    for caption, source in captions.items():
        spec = re.search(r"\\begin\{tabular\}\{(.*?)\}\n", source)[1]
        assert re.fullmatch(r"l+r(r@\{\\,\}lr?)+", spec), (caption, spec)  # keys l, n and values r
    pet = captions["SALN Tables 1, 5: Oxford-IIIT Pet, accuracy (\\%)"]
    assert re.search(r"^standard & 2 & [\d.]+ & \$\\pm\$ [\d.]+ & 86\.10 & ", pet, re.M)
    assert "(n=" not in pet  # the row's n stands once, in its own column
    assert_printable(tex, tmp_path)


@pytest.mark.slow
@needs_latex
def test_the_widest_values_still_fit_the_page(sweep, tmp_path):
    """Every table of the suite with each cell at its widest plausible value (two-digit means
    and stds, seven-digit counts) and a label-noise table over five rates: a column group too
    wide for the page is cut again, and every float still fits."""
    from test_prune import fake_run

    from saln_exp.report.noise import noise_table

    rates = (0.0, 0.1, 0.2, 0.3, 0.4)
    for i, (selector, prune, rate) in enumerate(
        product(("uniform", "accuracy_epoch_batch"), ("none", "confident_learning"), rates)
    ):
        fake_run(tmp_path / "noise" / str(i), selector, prune, rate, 0, 0.9, [rate, rate])
    noisy = load_runs([tmp_path / "noise"])
    tables = [*cli.select_tables(load_runs([sweep]), "all", None),
              noise_table(noisy.runs, noisy.curves)]  # fmt: skip
    for table in tables:
        for header, stat in table.numbers.columns:
            wide = 9_999_999.0 if table.digits[header] == 0 else 88.888888
            column = table.numbers[(header, stat)]
            paper = column.where(column.isna(), wide)  # the paper's values where it has any
            table.numbers[(header, stat)] = {"mean": wide, "std": wide / 8, "n": 3}.get(stat, paper)
    tex = latex_file(tables)
    assert "ASSIST Table 4.5: MNIST, FCNet (worst loss 1/2)" in floats(tex)
    assert_printable(tex, tmp_path)


@needs_latex
def test_the_noise_table_compiles(tmp_path):
    from test_prune import fake_run

    from saln_exp.report.noise import noise_table

    fake_run(tmp_path / "0", "uniform", "none", 0.0, 0, 0.90, None)
    fake_run(tmp_path / "1", "uniform", "none", 0.2, 0, 0.80, [0.2, 0.2])
    runs = load_runs([tmp_path])
    tex = render(noise_table(runs.runs, runs.curves), "latex")
    assert set(floats(tex)) == {
        "Label noise: selectors and dataset pruning (test accuracy)",
        "Label noise: selectors and dataset pruning (noisy share of trained samples)",
    }
    assert_printable(tex, tmp_path)


def test_latex_states_n_once_per_row_and_marks_a_cell_from_fewer_runs():
    """n in its own column (the most runs behind any cell of the row); a cell made from fewer
    runs says how many; a missing cell is one dash across mean and spread; an outer row name is
    printed once over the rows it heads."""
    index = pd.MultiIndex.from_tuples([("lenet", "none"), ("lenet", "batchwise")],
                                      names=["model", "filtering"])  # fmt: skip
    numbers = pd.DataFrame(
        {("acc", "mean"): [0.5, 0.25], ("acc", "std"): [0.1, np.nan], ("acc", "n"): [3, 1],
         ("time s", "mean"): [2.0, np.nan], ("time s", "std"): [0.5, np.nan],
         ("time s", "n"): [2, 0]},
        index=index,
    )  # fmt: skip
    tex = render(Table("T", numbers, {"acc": 3, "time s": 1}, "A note on `x_y`."), "latex")
    rows = tex.split("\\midrule\n")[1].split("\n\\bottomrule")[0].splitlines()
    assert rows == [
        r"lenet & none & 3 & 0.500 & $\pm$ 0.100 & 2.0 & $\pm$ 0.5 (n=2) \\",
        r" & batchwise & 1 & 0.250 &  & \multicolumn{2}{c}{---} \\",
    ]
    assert "only k of the row's n runs have it" in tex and r"\texttt{x\_y}" in tex


@pytest.mark.slow
def test_every_csv_reads_back_with_pandas_alone(sweep, tmp_path, capsys):
    assert cli.main([str(sweep), "--out", str(tmp_path), "--format", "csv", "--no-figures",
                     "--table", "all"]) == 0  # fmt: skip
    tables = sorted((tmp_path / "tables").glob("*.csv"))
    assert len(tables) == len(all_specs()) + 1
    for path in tables:
        frame = pd.read_csv(path)
        assert len(frame.columns) > 2 and not frame.columns.str.startswith("#").any()
    compare = pd.read_csv(tmp_path / "tables" / "selectors_compared.csv")
    assert list(compare["method"]) == sorted(LABELS.values())
    assert compare["test acc n"].tolist() == [len(SEEDS)] * len(SELECTORS)
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert {"run_id", "epoch", "selector", "dataset", "model", "seed", "experiment"} <= set(curves)
    assert set(curves["selector"]) == set(SELECTORS) and curves["seed"].notna().all()
    assert len(curves) == len(SELECTORS) * len(SEEDS) * 2  # 2 epochs each
    pd.read_csv(tmp_path / "runs.csv")


def test_wandb_offline_fails_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert cli.main(["--wandb", "someone/saln-exp:sweep"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        "error: --wandb someone/saln-exp:sweep needs W&B online"
    )


def test_missing_directory_is_one_clear_error(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_latest_resolves_to_the_newest_sweep(tmp_path):
    (tmp_path / "2026-01-01_00-00-00").mkdir()
    newest = tmp_path / "2026-01-02_00-00-00"
    newest.mkdir()
    assert resolve_source(tmp_path / "latest") == newest


def test_equal_budget_interpolates_each_curve_at_the_smallest_final_budget():
    runs = pd.DataFrame({"run_id": ["a", "b"], "group": ["g", "g"]})
    curves = pd.DataFrame(
        {
            "run_id": ["a", "a", "b", "b"],
            "samples/backprop": [100, 200, 50, 100],  # b back-propagates half as much per epoch
            "test/acc": [0.5, 0.7, 0.2, 0.6],
        }
    )
    acc = equal_budget_accuracy(runs, curves, "samples/backprop")
    assert acc.tolist() == pytest.approx([0.5, 0.6])  # both at 100 samples


def test_montage_frames_kept_and_dropped_images():
    images = np.zeros((5, 1, 4, 4), dtype=np.uint8)
    kept = np.array([True, False, True, False, True])
    grid = montage(images, kept, border=1)
    assert grid.shape == (2 * 6, 3 * 6, 3)  # 3 columns x 2 rows of 6x6 tiles
    assert np.allclose(grid[0, 0], KEPT_RGB)
    assert np.allclose(grid[0, 6], DROPPED_RGB)
    assert np.allclose(grid[2, 8], 0.65)  # a dropped image is faded (black -> light grey)


# Machado, Oliveira and Fernandes, "A Physiologically-based Model for Simulation of Color Vision
# Deficiency" (IEEE TVCG 2009), severity 1.0: what a viewer with each kind sees, on linear RGB.
COLOUR_BLIND = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                   [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                     [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                   [0.004733, 0.691367, 0.303900]],
}  # fmt: skip


def cie_lab(linear_rgb: np.ndarray) -> np.ndarray:
    """Linear sRGB (D65) -> CIE L*a*b*."""
    to_xyz = [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    xyz = np.asarray(to_xyz) @ np.clip(linear_rgb, 0, 1) / [0.95047, 1.0, 1.08883]
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_kept_and_dropped_stay_apart_for_colour_blind_readers():
    """The frames' two colours differ by a CIE76 distance of at least 40 (plainly different; 2.3
    is the least one notices) for every kind of dichromat; green / red falls to 14 for the
    commonest (deuteranopia)."""
    linear = [np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
              for c in (np.asarray(KEPT_RGB, float), np.asarray(DROPPED_RGB, float))]  # fmt: skip
    for kind, matrix in COLOUR_BLIND.items():
        kept, dropped = (cie_lab(np.asarray(matrix) @ c) for c in linear)
        assert np.linalg.norm(kept - dropped) >= 40, kind


def fake_example(n: int = 64) -> dict:
    return {"images": torch.zeros(n, 1, 8, 8, dtype=torch.uint8), "kept": torch.arange(n) % 3 == 0,
            "labels": torch.arange(n) % 10, "selector": "saln", "batch": 0}  # fmt: skip


def test_the_selection_figure_of_many_selectors_wraps_into_rows():
    from saln_exp.report.figures import selection_figure

    fig = selection_figure({f"selector {i}": fake_example() for i in range(7)}, "digits, LeNet")
    FigureCanvasAgg(fig).draw()
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 7
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 3  # rows of three
    width, height = fig.get_size_inches()
    assert width <= 12 and width / height < 1.5  # a page's width, not a strip


def texts_off_canvas(fig) -> list[str]:
    """Titles, axis labels, legend entries and annotations that run past the figure's edge."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    texts = list(fig.texts)
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        texts += [*legend.get_texts(), legend.get_title()] if legend else []
    for ax in (ax for ax in fig.axes if ax.get_visible()):
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        texts += ax.texts
    edge, renderer = fig.bbox.padded(1), canvas.get_renderer()
    shown = [t for t in texts if t.get_visible() and t.get_text().strip()]
    corners = {
        t: (t.get_window_extent(renderer).min, t.get_window_extent(renderer).max) for t in shown
    }
    return [t.get_text() for t in shown if not all(edge.contains(*c) for c in corners[t])]


@pytest.mark.slow
def test_every_figure_keeps_its_titles_and_labels_on_the_canvas(sweep, tmp_path, monkeypatch):
    """Every figure of a real sweep's report, its methods given long names (a label-noise sweep's
    `saln prune=confident_learning noise_rate=0.2`): titles wrap instead of running off."""
    from saln_exp.report import figures, noise

    drawn, save = {}, figures.save

    def keep(fig, out_dir, name):
        drawn[name] = fig
        return save(fig, out_dir, name)

    monkeypatch.setattr(figures, "save", keep)
    monkeypatch.setattr(noise, "save", keep)
    runs = load_runs([sweep])
    runs.runs["variant"] += " prune=confident_learning noise_rate=0.2 filter_ratio=0.1"
    figures.report_figures(runs, tmp_path)
    noise.forgetting_figures(runs.runs, tmp_path)
    kinds = ("curves_epoch", "curves_time", "selection", "final_layer", "pareto")
    assert {f"saln_pets_{kind}" for kind in kinds} <= set(drawn)
    assert any(name.startswith("forgetting_") for name in drawn)
    for name, fig in drawn.items():
        assert not texts_off_canvas(fig), name


def test_time_axes_read_in_plain_seconds_or_minutes():
    """Training time in seconds up to ten minutes and in minutes beyond, tick labels plain
    numbers (0.5, never the SI "500m" that reads as 500 minutes)."""
    from saln_exp.report.figures import curves_figure, pareto_figure
    from saln_exp.report.tables import TRAIN_SECONDS

    for seconds, unit, divisor in (((0.42, 0.61, 1.35, 1.6), "seconds", 1),
                                   ((3000, 5400, 7000, 9000), "minutes", 60)):  # fmt: skip
        runs = pd.DataFrame({"run_id": list("abcd"), "variant": ["none", "none", "saln", "saln"],
                             "selector": ["none", "none", "saln", "saln"], "train_time_s": seconds,
                             "samples_backprop": [1000, 1100, 200, 250],
                             "final_test_acc": [0.9, 0.91, 0.8, 0.82]})  # fmt: skip
        curves = pd.DataFrame({"run_id": list("aabbccdd"), "epoch": [1, 2] * 4,
                               TRAIN_SECONDS: [s * f for s in seconds for f in (0.5, 1)],
                               "test/acc": 0.5, "test/loss_mean": 1.0})  # fmt: skip
        for fig in (pareto_figure(runs, "t"), curves_figure(runs, curves, TRAIN_SECONDS, "t")):
            FigureCanvasAgg(fig).draw()
            ax = fig.axes[0]
            assert f"training {unit}" in ax.get_xlabel()
            ticks = [float(t.get_text().replace("\N{MINUS SIGN}", "-"))
                     for t in ax.get_xticklabels() if t.get_text()]  # fmt: skip
            assert ax.xaxis.get_major_formatter().get_offset() == ""
            assert (
                min(ticks) < min(seconds) / divisor * 1.01
                and max(ticks) > max(seconds) / divisor / 2
            )


def test_coinciding_accumulation_lines_are_nested_and_the_legend_states_n():
    """Lines that run on top of each other (selectors without accumulation: one raw batch per
    step) are drawn as nested stripes of different widths, and the legend says n."""
    from saln_exp.report.figures import accumulation_figure

    runs = pd.DataFrame({"run_id": list("abcd"), "variant": ["none", "uniform", "uniform", "accuracy"],
                         "selector": ["none", "uniform", "uniform", "accuracy"]})  # fmt: skip
    rows = []
    for run, steps, raw, kept in (("a", 17, 1.0, 1.0), ("b", 17, 1.0, 0.2), ("c", 17, 1.0, 0.2),
                                  ("d", 8, 2.1, 0.8)):  # fmt: skip
        for epoch in (1, 2, 3):
            rows.append({"run_id": run, "epoch": epoch, "optim/steps": steps * epoch,
                         "select/overflow": 40.0 * (raw > 1), "select/raw_batches_per_step": raw,
                         "select/kept_frac": kept})  # fmt: skip
    fig = accumulation_figure(runs, pd.DataFrame(rows), "t")
    raw_panel = fig.axes[0]
    bundle = [line for line in raw_panel.get_lines() if np.allclose(line.get_ydata(), 1.0)]
    assert len(bundle) == 2 and len({line.get_linewidth() for line in bundle}) == 2
    labels = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert {"none (n=1)", "uniform (n=2)", "accuracy (n=1)"} <= labels


def test_smoke_and_debug_runs_never_appear_beside_a_papers_values(make_cfg, tmp_path, capsys):
    from saln_exp.train import run

    for name, overrides in (("smoke", ("experiment=assist_4_5", "smoke=true")),
                            ("debug", ("experiment_name=assist_4_5", "debug=fast", "model=fcnet",
                                       "model.hidden=100", "selector=none"))):  # fmt: skip
        cfg = make_cfg(*overrides)
        cfg.paths.output_dir = str(tmp_path / "runs" / name)
        run(cfg)
    capsys.readouterr()
    assert cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "r"), "--no-figures",
                     "--table", "assist_4_5"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    table_lines = [line for line in out.splitlines() if line.startswith("| fcnet")]
    assert table_lines and all("(n=" not in line for line in table_lines)  # no value of ours
    assert "2 smoke/debug run(s) left out" in out
    assert (
        "note: 2 run(s) made with smoke=true or debug=... are left out of the paper tables" in err
    )


SMALL_NET = ("model=fcnet", "model.hidden=16", "dataset.image_size=8")
TINY = (*SMALL_NET, "trainer.epochs=1")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One real 1-epoch run (an FCNet on 8x8 digits), for tests that edit copies of its files."""
    from saln_exp.train import run

    cfg = compose_cfg(tmp_path_factory.mktemp("tiny"), *TINY)
    run(cfg)
    return Path(cfg.paths.output_dir)


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("*.pt", ".lock"))
    return dest


@pytest.mark.slow
def test_a_repeated_seed_is_counted_once_and_the_duplicate_named(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("-m", "seed=0,0,1", "selector=none", "trainer.epochs=1", "logger=none",
                     "trainer.progress=false", f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    finals = {job: json.loads((sweep_dir / job / "summary.json").read_text())["final_test_acc"]
              for job in ("0", "1", "2")}  # fmt: skip
    assert cli.main([str(sweep_dir), "--table", "compare", "--no-figures"]) == 0
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith("| none"))
    mean, std = mean_std([finals["0"], finals["2"]])  # seeds 0 and 1, each once
    assert f"{mean:.4f} ± {std:.4f} (n=2)" in row
    duplicate_lines = [line for line in err.splitlines() if "duplicate" in line]
    assert duplicate_lines == [
        "note: 1 run(s) left out as duplicates of another run's configuration and seed (n counts "
        f"distinct seeds): {sweep_dir / '1'} (kept {sweep_dir / '0'})"
    ]
    assert len(pd.read_csv(sweep_dir / "report" / "runs.csv")) == 2

    # the most complete run is the one kept: a completed one over an interrupted one
    (sweep_dir / "0" / "summary.json").unlink()
    (sweep_dir / "0" / "metrics.jsonl").write_text("")
    (sweep_dir / "0" / "status.json").write_text(json.dumps({"status": "interrupted"}))
    assert cli.main([str(sweep_dir), "--table", "compare", "--no-figures"]) == 0
    out, err = capsys.readouterr()
    assert f"{sweep_dir / '0'} (kept {sweep_dir / '1'})" in err
    assert "did not complete" not in err  # the interrupted duplicate is not a missing run
    assert "(n=2)" in next(line for line in out.splitlines() if line.startswith("| none"))


def test_only_runs_of_the_papers_recipe_stand_beside_its_values(tiny_run, tmp_path, capsys):
    """Runs labelled ASSIST Table 4.5: the recipe (twice: seeds 0 and 1, the second with
    settings that do not change results), one with fewer epochs, one with a width the thesis
    has no row for. Only the first two fill the table; each other run is named with its keys."""
    runs_dir, recipe = tmp_path / "runs", ("experiment=assist_4_5", "model.hidden=100")
    variants = {
        "recipe": ((), 0),
        "neutral": (("trainer.progress=true", "trainer.checkpoint=false", "eval.batch_size=64",
                     "trainer.threads=2", "device=cpu", "paths.data_dir=/elsewhere"), 1),
        "epochs": (("trainer.epochs=2",), 2),
        "width": (("model.hidden=50",), 3),
    }  # fmt: skip
    for name, (extra, seed) in variants.items():
        give_config(copy_run(tiny_run, runs_dir / name), tmp_path, *recipe, *extra, seed=seed)
    assert cli.main([str(runs_dir), "--table", "assist_4_5", "--no-figures",
                     "--out", str(tmp_path / "r")]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    test_acc = json.loads((tiny_run / "summary.json").read_text())["final_test_acc"]
    row = next(line for line in out.splitlines() if line.startswith("| fcnet100  | none"))
    assert f"{test_acc:.3f} ± 0.000 (n=2)" in row
    assert not [line for line in out.splitlines() if line.startswith("| fcnet50")]
    assert (
        "2 run(s) of another recipe left out (they differ in model.hidden, trainer.epochs)" in out
    )
    assert (f"note: not assist_4_5's recipe, left out of its paper table (trainer.epochs: 2 vs "
            f"500): {runs_dir / 'epochs'}") in err.splitlines()  # fmt: skip
    assert (f"note: not assist_4_5's recipe, left out of its paper table (model.hidden: 50 (the "
            f"paper's: 100, 1000, 3000)): {runs_dir / 'width'}") in err.splitlines()  # fmt: skip


def test_the_keys_that_do_not_change_results_are_listed_in_the_docs():
    from saln_exp import PROJECT_ROOT
    from saln_exp.report.recipe import RESULT_NEUTRAL

    docs = (PROJECT_ROOT / "docs" / "reporting.md").read_text()
    assert [key for key in RESULT_NEUTRAL if f"`{key}`" not in docs] == []


def test_a_non_finite_value_is_flagged_and_never_a_mean_or_best(tiny_run, tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    for seed in range(4):
        give_config(copy_run(tiny_run, runs_dir / f"s{seed}"), tmp_path, *TINY, seed=seed)
    summary = json.loads((tiny_run / "summary.json").read_text())
    diverged = {"s2": ("best_test_acc", float("inf")), "s3": ("final_test_acc", float("nan"))}
    for name, (key, value) in diverged.items():
        path = runs_dir / name / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))  # Infinity, NaN
    metrics = runs_dir / "s2" / "metrics.jsonl"
    last = json.loads(metrics.read_text().splitlines()[-1])
    metrics.write_text(json.dumps({**last, "test/loss_q90": float("inf")}) + "\n")
    assert cli.main([str(runs_dir), "--table", "compare", "--no-figures",
                     "--out", str(tmp_path / "r")]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    numbers = compare_table(load_runs([runs_dir])).numbers.iloc[0]
    assert numbers[("best test acc", "mean")] == pytest.approx(summary["best_test_acc"])
    assert numbers[("test loss q0.9", "mean")] == pytest.approx(last["test/loss_q90"])
    assert numbers[("best test acc", "n")] == numbers[("test acc", "n")] == 2  # s0 and s1
    alone = compare_table(load_runs([runs_dir / "s2"])).numbers  # its row stays, with no number
    assert alone[("test acc", "n")].tolist() == [0] and alone[("test acc", "mean")].isna().all()
    assert "inf" not in out.lower().replace("information", "") and "nan" not in out.lower()
    assert ("2 run(s) flagged for non-finite values (best_test_acc, final_test_acc, "
            "test/loss_q90: a diverged run?) and left out of the statistics.") in out  # fmt: skip
    assert (f"note: 2 run(s) with non-finite values flagged and left out of every mean: "
            f"{runs_dir / 's2'} (best_test_acc, test/loss_q90); {runs_dir / 's3'} (final_test_acc)"
            ) in err.splitlines()  # fmt: skip


def test_runs_of_different_budgets_are_separate_rows_never_one_mean(make_cfg, tmp_path, capsys):
    from saln_exp.train import run

    for epochs in (1, 2):
        cfg = make_cfg(*SMALL_NET, f"trainer.epochs={epochs}")
        cfg.paths.output_dir = str(tmp_path / "runs" / f"e{epochs}")
        run(cfg)
    capsys.readouterr()
    assert cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "r"), "--no-figures"]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| saln")
    }
    assert set(rows) == {"saln epochs=1", "saln epochs=2"}
    assert all("(n=1)" in row and "±" not in row for row in rows.values())
    finals = {e: json.loads((tmp_path / "runs" / f"e{e}" / "summary.json").read_text())["final_test_acc"]
              for e in (1, 2)}  # fmt: skip
    for epochs, row in rows.items():
        assert f"{finals[int(epochs[-1])]:.4f} (n=1)" in row


def test_runs_of_other_settings_sharing_a_name_are_separate_rows(tiny_run, tmp_path):
    """Seeds 0 and 1 of one selector, with and without a validation split: two configurations,
    so two rows that name the setting, each of one seed, never one mean."""
    runs_dir = tmp_path / "runs"
    for seed, fraction in ((0, 0.0), (1, 0.2)):
        give_config(copy_run(tiny_run, runs_dir / f"v{fraction}"), tmp_path, *TINY,
                    f"dataset.val_fraction={fraction}", seed=seed)  # fmt: skip
    numbers = compare_table(load_runs([runs_dir])).numbers
    assert list(numbers.index) == [
        "saln dataset.val_fraction=0.0",
        "saln dataset.val_fraction=0.2",
    ]
    assert numbers[("test acc", "n")].tolist() == [1, 1]


def test_the_label_noise_table_never_pools_budgets(tiny_run, tmp_path):
    from saln_exp.report.noise import noise_table

    runs_dir = tmp_path / "runs"
    for seed, epochs in ((0, 1), (1, 2)):
        give_config(copy_run(tiny_run, runs_dir / f"e{epochs}"), tmp_path, *SMALL_NET,
                    f"trainer.epochs={epochs}", "dataset.label_noise.rate=0.2", seed=seed)  # fmt: skip
    runs = load_runs([runs_dir])
    numbers = noise_table(runs.runs, runs.curves).numbers
    assert list(numbers.index) == [("saln", "none", 1), ("saln", "none", 2)]
    assert numbers[("test acc @ noise 0.2", "n")].tolist() == [1, 1]


def test_every_selector_has_its_own_colour_blind_safe_style():
    from saln_exp import PROJECT_ROOT
    from saln_exp.report.style import SELECTOR_STYLES
    from saln_exp.selectors import Selector

    files = [
        yaml.safe_load(p.read_text()) for p in (PROJECT_ROOT / "conf" / "selector").glob("*.yaml")
    ]
    selectors = {f["name"] for f in files if "name" in f}  # variants (saln_paper) inherit a name
    assert selectors == set(SELECTOR_STYLES)
    assert Selector.style not in SELECTOR_STYLES.values()  # every selector sets its own
    assert len(set(SELECTOR_STYLES.values())) == len(SELECTOR_STYLES)  # no two look alike
    assert len({marker for _, marker in SELECTOR_STYLES.values()}) == len(SELECTOR_STYLES)


def test_figure_names_suit_includegraphics_and_the_final_layers_share_one_scale():
    from saln_exp.report.figures import final_layer_figure
    from saln_exp.report.style import file_stem

    assert (
        file_stem("forgetting_uniform_prune=none_noise=0.2")
        == "forgetting_uniform_prune_none_noise_0_2"
    )
    rng = np.random.default_rng(0)
    fig = final_layer_figure({"a": rng.normal(size=(3, 5)), "b": 10 * rng.normal(size=(3, 5))}, "t")
    limits = {im.get_clim() for ax in fig.axes for im in ax.get_images()}
    assert len(limits) == 1


def test_a_noise_sweep_is_drawn_one_panel_per_noise_rate(tmp_path):
    from test_prune import fake_run

    from saln_exp.report.figures import report_figures

    for i, rate in enumerate((0.0, 0.2, 0.4)):
        fake_run(
            tmp_path / str(i),
            "uniform",
            "none",
            rate,
            0,
            0.9 - rate,
            None if rate == 0 else [0.2, 0.2],
        )
    paths = report_figures(load_runs([tmp_path]), tmp_path / "figures")
    (noise,) = [p for p in paths if p.name.endswith("_curves_noise.png")]
    assert not [p for p in paths if "_curves_epoch" in p.name]  # not all lines in one axis
    with Image.open(noise) as image:
        assert image.size[0] > image.size[1] * 2  # three panels side by side


@pytest.mark.slow
def test_the_report_goes_to_wandb_as_tables_and_images(sweep, tmp_path, capsys, monkeypatch):
    from wandb_records import history, run_info

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert (
        cli.main([str(sweep), "--out", str(tmp_path / "r"), "--to-wandb", "saln-exp-reports"]) == 0
    )
    assert "report logged to W&B project saln-exp-reports (offline; upload it with: wandb sync" in (
        capsys.readouterr().err
    )
    (path,) = (tmp_path / "r" / "wandb").glob("offline-run-*/*.wandb")
    keys = {k for row in history(path) for k in row}
    assert "tables/selectors_compared/_type" in keys
    assert "tables/saln_tables_1_5_oxford_iiit_pet_accuracy/_type" in keys
    assert any(k.startswith("figures/saln_pets_curves_epoch/") for k in keys)
    assert run_info(path)["job_type"] == "report"


def test_the_pareto_front_keeps_only_points_nothing_beats_on_both_axes():
    from saln_exp.report.figures import pareto_front

    cost = np.array([1.0, 2.0, 3.0, 1.5, 4.0, 2.0])
    acc = np.array([0.5, 0.7, 0.9, 0.4, 0.85, 0.6])
    assert pareto_front(cost, acc).tolist() == [0, 1, 2]  # 3 and 5 are beaten by 0 and 1; 4 by 2
