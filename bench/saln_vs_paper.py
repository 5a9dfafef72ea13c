"""Section 1: SALN's selection step against the paper's Algorithm 1 as printed.

Same features, same kept set, per batch size and feature width; with the Fiedler gap that says
whether the kept set is well defined at all (a repeated eigenvalue or a tie at the top-k cut
leaves nothing to agree on)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.inputs import auto_solver, realistic_features, select_once, unseeded_context
from bench.settings import Log, Settings
from bench.tables import ms, ratio, table
from bench.timing import round_ratios, summary, timed
from oracles import saln_algorithm1, saln_algorithm1_float64
from saln_exp.selectors import SELECTORS, Batch, ViewSources
from saln_exp.spectral import dense_is_faster, single_blas_thread

KEY = "saln_vs_algorithm1"
FILTER_RATIO = 0.8


def exact_reference(features: Tensor, keep: int) -> dict[str, Any]:
    """Algorithm 1 in float64: the exact kept set, the Fiedler gap, the margin at the top-k cut,
    and whether the kept set is unique (a repeated eigenvalue or a tie at the cut leaves nothing
    to agree on)."""
    reference = saln_algorithm1_float64(features.double().numpy(), FILTER_RATIO)
    assert len(reference["kept"]) == keep
    return reference


def solver_label(solver: str, n: int, d: int) -> str:
    """Which code path the resolved solver takes for an n x d batch."""
    if solver == "eigh":
        return "eigh"
    return "lanczos: dense 3 eigenpairs" if dense_is_faster(n, d) else "lanczos"


def seeded_batches(n: int, d: int, signed: bool, rounds: int, device: torch.device) -> list:
    """`rounds` + 1 batches of fresh features (round 0 is a warm-up), each with the view sources
    that hand SALN the batch's own features, as Algorithm 1 gets them (no gather from a
    dataset-wide store)."""
    batches = []
    for r in range(rounds + 1):
        feats = realistic_features(n, d, signed, seed=1000 * n + d + r)
        batch = Batch(torch.arange(n), feats, torch.zeros(n, dtype=torch.long))
        on_device = feats.to(device)
        sources = ViewSources(pretrained_features=lambda index, f=on_device: f)
        batches.append((feats, batch, sources))
    return batches


def time_alternating(st: Settings, batches: list, selector, device: torch.device):
    """Algorithm 1 and SALN on every batch, alternating which goes first; nothing else runs in
    between (the agreement checks use multi-threaded BLAS, whose threads keep spinning for a
    while and would bill the next call). Returns the times and each batch's two outputs."""
    dummy = nn.Identity()
    times: dict[str, list[float]] = {"alg1": [], "saln": []}
    outputs: list[dict[str, Any]] = []
    for r, (feats, batch, sources) in enumerate(batches):
        variants = {
            "alg1": partial(saln_algorithm1, feats, FILTER_RATIO),
            "saln": partial(select_once, selector, batch, dummy, sources),
        }
        out = {}
        for name in variants if r % 2 == 0 else list(variants)[::-1]:
            if st.saln_warm:  # BLAS / OpenMP threads awake, caches hot: the same for both
                variants[name]()
            seconds, out[name] = timed(variants[name], device)
            if r > 0:
                times[name].append(seconds)
        outputs.append(out)
    return times, outputs


def other_solver(solver: str) -> str:
    """The solver a run on this device does not pick: on a CPU the dense torch `eigh`, on a GPU
    the Lanczos solve (on the host: the features are copied over)."""
    return "eigh" if solver == "lanczos" else "lanczos"


def time_solver(batches: list, device: torch.device, solver: str) -> list[float]:
    """SALN's step with `solver` on the same batches, for reference."""
    selector = SELECTORS["saln"](filter_ratio=FILTER_RATIO, features="pretrained", solver=solver)
    times = []
    for _, batch, sources in batches[1:]:
        step = partial(select_once, selector, batch, nn.Identity(), sources)
        step()
        times.append(timed(step, device)[0])
    return times


def agreement(batches: list, outputs: list) -> dict[str, Any]:
    """How often SALN keeps Algorithm 1's set, counted over the batches with a unique answer."""
    agree_alg1, agree_exact, gaps, margins = [], [], [], []
    identical = ambiguous = 0
    with single_blas_thread():
        for (feats, _, _), out in zip(batches[1:], outputs[1:], strict=True):
            paper = set(out["alg1"].tolist())
            kept = set(out["saln"].positions.cpu().tolist())
            ref = exact_reference(feats, len(paper))
            overlap = len(paper & kept) / len(paper)
            agree_alg1.append(overlap)
            agree_exact.append(len(ref["kept"] & kept) / len(paper))
            gaps.append(ref["gap"])
            margins.append(ref["margin"])
            if not ref["unique"]:
                ambiguous += 1
            elif overlap == 1.0:
                identical += 1
    return {
        "agree_alg1_pct": {
            "mean": 100 * float(np.mean(agree_alg1)),
            "min": 100 * float(np.min(agree_alg1)),
        },
        "agree_exact_pct": {
            "mean": 100 * float(np.mean(agree_exact)),
            "min": 100 * float(np.min(agree_exact)),
        },
        "identical": identical,
        "non_degenerate": len(outputs) - 1 - ambiguous,
        "ambiguous": ambiguous,
        "fiedler_gap_min": float(np.min(gaps)),
        "fiedler_gap_median": float(np.median(gaps)),
        "topk_margin_min": float(np.min(margins)),
    }


def measure(st: Settings, device: torch.device, workdir: Path, log: Log) -> list[dict[str, Any]]:
    cases = [(n, d, False) for d in st.saln_widths for n in st.saln_sizes]
    cases.append((*st.saln_signed, True))
    solver = auto_solver(unseeded_context(workdir, device))  # what a run on this device uses
    rows = []
    for n, d, signed in cases:
        selector = SELECTORS["saln"](
            filter_ratio=FILTER_RATIO, features="pretrained", solver=solver
        )
        rounds = st.saln_rounds * (2 if n <= 256 else 1)  # small batches are cheap: more rounds
        batches = seeded_batches(n, d, signed, rounds, device)
        times, outputs = time_alternating(st, batches, selector, device)
        other = other_solver(selector.solver)
        other_times = time_solver(batches, device, other) if d in st.saln_other_widths else []
        agreed = agreement(batches, outputs)
        row = {
            "B": n,
            "d": d,
            "features": "signed" if signed else "relu",
            "rounds": rounds,
            "solver": solver_label(selector.solver, n, d),
            "alg1_ms": summary(times["alg1"], 1e3),
            "saln_ms": summary(times["saln"], 1e3),
            "other_solver": other,
            "other_ms": summary(other_times, 1e3) if other_times else None,
            "speedup": round_ratios(times["alg1"], times["saln"]),
            **agreed,
        }
        rows.append(row)
        log(
            f"  SALN B={n} d={d} {row['features']}: Alg.1 {row['alg1_ms']['median']:.1f} ms, "
            f"SALN {row['saln_ms']['median']:.1f} ms ({row['speedup']['median']:.1f}x), "
            f"identical {row['identical']}/{row['non_degenerate']}"
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## 1. SALN selection step vs the paper's Algorithm 1",
        "",
        "`SALN.select` on cached features (normalise, solve, top-k) vs `saln_algorithm1` as printed "
        "(sklearn cosine_similarity, np.diag, np.linalg.eigh) on the same float32 features; "
        "filter ratio 0.8; a new seeded batch every round; each timed call follows an untimed call of the same method (steady state: threads awake, caches warm), methods alternate. *same kept set*: batches where SALN keeps "
        "exactly Algorithm 1's set, out of those with a unique answer (Fiedler gap > 0, no tie at the "
        "top-k cut). *overlap vs exact*: against a float64 dense solve. *other solver*: SALN's "
        "step with the solver `solver=auto` does not pick on this device (on a CPU the dense "
        "`eigh`, on a GPU the Lanczos solve on the host).",
        "",
    ]
    header = [
        "B",
        "d",
        "features",
        "Alg. 1 ms",
        "SALN ms",
        "other solver ms",
        "speedup",
        "same kept set",
        "overlap % (min)",
        "overlap vs exact %",
        "Fiedler gap (min)",
        "solver",
    ]
    cells = [
        [
            r["B"],
            r["d"],
            r["features"],
            ms(r["alg1_ms"]),
            ms(r["saln_ms"]),
            f"{r['other_solver']}: {ms(r['other_ms'])}" if r.get("other_ms") else "-",
            ratio(r["speedup"]),
            f"{r['identical']}/{r['non_degenerate']}",
            f"{r['agree_alg1_pct']['min']:.1f}",
            f"{r['agree_exact_pct']['min']:.1f}",
            f"{r['fiedler_gap_min']:.3g}",
            r["solver"],
        ]
        for r in rows
    ]
    return lines + table(header, cells)
