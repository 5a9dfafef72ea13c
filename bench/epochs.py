"""Section 6: where an epoch of the ASSIST MNIST recipes spends its time.

Each case is a real run (`saln_exp.train.run`) of an experiment file's recipe on the real MNIST
(`make mnist` puts it in data/MNIST/raw) for a few epochs; the run's own per-phase clocks
(`time/train_s`, `time/select_s`, `time/eval_s`, cumulative in metrics.jsonl) give the seconds per
epoch of training (batch reading included), selection (the filter's forward), evaluation (full
train and test sets, ASSIST's metrics) and wall. The first epoch is reported apart from the rest
(warm-up, and the filter keeps far more early on).

`reuse=off` repeats a case with the two shared computations switched off (the normalised copy of
each split, and the training-split outputs that evaluation and epochwise filtering share), which
is what the runner did before them; the metrics of both runs are compared and must be equal.

`bare` cases also time the bare loops (bench/bare.py) on the same data, model and batch sizes: a
training epoch and an inference pass over the splits the recipe evaluates. Their sum times the
recipe's epochs is the least time the whole recipe can take on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import saln_exp.data.base as data_base
from bench import bare
from bench.inputs import data_and_model, run_config
from bench.settings import EpochCase, Log, Settings
from bench.timing import interleaved
from saln_exp import PROJECT_ROOT
from saln_exp.epoch_metrics import train_eval_positions
from saln_exp.metrics import SplitOutputs, per_sample_outputs
from saln_exp.optim import build_optimizer
from saln_exp.rundir import RunFiles

KEY = "epoch_times"
PHASES = ("train", "select", "eval", "wall")
MNIST_FILES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")


def mnist_data_dir() -> Path | None:
    """paths.data_dir as the default config resolves it, if the unpacked MNIST is there."""
    data_dir = Path(os.environ.get("SALN_DATA_DIR", PROJECT_ROOT / "data"))
    raw = data_dir / "MNIST" / "raw"
    return data_dir if all((raw / name).is_file() for name in MNIST_FILES) else None


@contextlib.contextmanager
def reuse_switched_off() -> Iterator[None]:
    """The runner without its two shared computations: every batch normalised again, and the
    training split classified again by epochwise filtering. (saln_exp has no switch for this,
    so the two are patched out for the duration.)"""
    budget, get = data_base.NORMALISED_CACHE_BYTES, SplitOutputs.get
    data_base.NORMALISED_CACHE_BYTES = 0
    SplitOutputs.get = lambda self, model, split, pipeline, bs: per_sample_outputs(
        model, split, pipeline, bs
    )
    try:
        yield
    finally:
        data_base.NORMALISED_CACHE_BYTES, SplitOutputs.get = budget, get


def run_case(overrides: tuple[str, ...], epochs: int, data_dir: Path, workdir: Path) -> list[dict]:
    """A real run of `epochs` epochs; its metrics.jsonl records."""
    from saln_exp.train import run  # the CLI module; imported late to keep the bench light

    cfg = run_config(workdir, *overrides, f"trainer.epochs={epochs}", data_dir=data_dir)
    run(cfg)
    return RunFiles(cfg.paths.output_dir).read_metrics()


def per_epoch_seconds(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Seconds per phase: the first epoch, and the median of the later ones."""
    out = {}
    for phase in PHASES:
        total = [0.0] + [r[f"time/{phase}_s"] for r in rows]
        deltas = np.diff(total)
        out[phase] = {
            "first": float(deltas[0]),
            "later": float(np.median(deltas[1:])) if len(deltas) > 1 else float("nan"),
        }
    return out


def same_numbers(a: list[dict], b: list[dict]) -> bool:
    """Whether two runs wrote the same metrics, clocks aside."""

    def numbers(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    return json.dumps(numbers(a), sort_keys=True) == json.dumps(numbers(b), sort_keys=True)


def bare_seconds(
    case: EpochCase, data_dir: Path, workdir: Path, device: torch.device, rounds: int
) -> dict[str, float]:
    """Seconds of a bare training epoch and a bare pass over the splits the recipe evaluates
    (the fastest of `rounds`, after an untimed one), on the recipe's data, model and batches."""
    cfg = run_config(workdir, *case.overrides, data_dir=data_dir)
    data, model = data_and_model(cfg, device, uint8=False)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    train_rows, train_targets = bare.rows(data, data.train, bool(cfg.dataset.augment))
    subset = train_eval_positions(
        len(data.train), cfg.eval.get("train_subset"), int(cfg.dataset.split_seed), device
    )
    evaluated = [bare.rows(data, data.train, positions=subset)]
    evaluated += [bare.rows(data, split) for split in (data.val, data.test) if split is not None]
    batch, eval_batch = int(cfg.dataset.batch_size), int(cfg.eval.batch_size)
    times = interleaved(
        {
            "train": lambda: bare.train_epoch(model, optimizer, train_rows, train_targets, batch),
            "eval": lambda: sum(bare.inference(model, x, y, eval_batch) for x, y in evaluated),
        },
        rounds,
        device,
    )
    return {phase: min(seconds) for phase, seconds in times.items()}


def measure(st: Settings, device: torch.device, workdir: Path, log: Log) -> list[dict[str, Any]]:
    data_dir = mnist_data_dir()
    if data_dir is None:
        raise FileNotFoundError("the real MNIST is not in data/MNIST/raw: run `make mnist` first")
    rows = []
    for case in st.epoch_cases:
        case_dir = workdir / f"epochs-{len(rows)}"
        metrics = run_case(case.overrides, case.epochs, data_dir, case_dir / "reuse-on")
        row: dict[str, Any] = {
            "case": case.label,
            "overrides": list(case.overrides),
            "epochs": case.epochs,
            "seconds": per_epoch_seconds(metrics),
            "kept_frac_last": metrics[-1]["select/kept_frac"],
        }
        if case.reuse_off:
            with reuse_switched_off():
                before = run_case(case.overrides, case.epochs, data_dir, case_dir / "reuse-off")
            row["seconds_reuse_off"] = per_epoch_seconds(before)
            row["same_numbers"] = same_numbers(metrics, before)
        if case.bare:
            row["seconds_bare"] = bare_seconds(
                case, data_dir, case_dir / "bare", device, st.bare_rounds
            )
        rows.append(row)
        later = row["seconds"]["wall"]["later"]
        extra = (
            f", reuse off {row['seconds_reuse_off']['wall']['later']:.2f} s, "
            f"same numbers: {row['same_numbers']}"
            if case.reuse_off
            else ""
        )
        if case.bare:
            b = row["seconds_bare"]
            extra += f", bare loops {b['train']:.2f} s + {b['eval']:.2f} s"
        log(f"  {case.label}: {later:.2f} s per epoch after the first{extra}")
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## 6. Epoch time of the ASSIST MNIST recipes (real MNIST)",
        "",
        "Seconds per epoch of the ASSIST MNIST recipes on the real MNIST, from each run's own "
        "clocks: train (batches read, forward, backward, step), select (the filter's forward), "
        "eval (ASSIST's metrics over the full train and test sets every epoch), wall. *first*: "
        "epoch 1; *later*: median of epochs 2 on. *reuse off*: the same run without the "
        "normalised split copies and the shared training-split outputs (the runner before them); "
        "*same numbers*: both runs wrote identical metrics apart from the clocks. *bare train / "
        "bare eval*: the bare loops (bench/bare.py) on the same data, model and batch sizes, the "
        "fastest of their rounds: what an epoch's training and evaluation cannot go below here.",
        "",
        "| case | epochs | train s | select s | eval s | wall s (first) | wall s (later) "
        "| wall s, reuse off (later) | speed-up | same numbers | bare train s | bare eval s "
        "| kept (last epoch) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s = r["seconds"]
        off = r.get("seconds_reuse_off")
        off_wall = f"{off['wall']['later']:.2f}" if off else "-"
        speedup = f"{off['wall']['later'] / s['wall']['later']:.2f}x" if off else "-"
        same = {True: "yes", False: "**NO**"}.get(r.get("same_numbers"), "-")
        b = r.get("seconds_bare")
        bare_train, bare_eval = (f"{b['train']:.2f}", f"{b['eval']:.2f}") if b else ("-", "-")
        lines.append(
            f"| {r['case']} | {r['epochs']} | {s['train']['later']:.2f} | {s['select']['later']:.2f} "
            f"| {s['eval']['later']:.2f} | {s['wall']['first']:.2f} | {s['wall']['later']:.2f} "
            f"| {off_wall} | {speedup} | {same} | {bare_train} | {bare_eval} "
            f"| {r['kept_frac_last']:.3f} |"
        )
    return lines
