"""saln-bench and the SALN eigensolver it measures.

The solver tests are property tests against the paper: for seeded batches whose Fiedler vector is
unique (a gap on both sides of lambda2 and no tie at the top-k cut), the fast solver must keep
exactly the samples Algorithm 1 keeps, and find the same eigenvalues as numpy. Features go in as
float64 so Algorithm 1 itself is computed without float32 rounding.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.cli import SECTION_NAMES, main
from bench.epochs import mnist_data_dir
from bench.results import SCHEMA_VERSION
from oracles import saln_algorithm1
from saln_exp.selectors import SELECTORS, Batch, BatchView, ViewSources
from saln_exp.selectors.saln import (
    DENSE_BELOW,
    _lanczos,
    dense_laplacian,
    normalize_rows,
    smallest_eigenpairs,
)


def features(n: int, d: int, seed: int, signed: bool = False, rank: int = 8) -> torch.Tensor:
    """Correlated backbone-like rows: low rank plus noise, post-ReLU unless signed."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g, dtype=torch.float64)
    x = z @ torch.randn(rank, d, generator=g, dtype=torch.float64) / rank**0.5
    x = x + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x if signed else torch.relu(x)


def dense_reference(x: torch.Tensor, similarity: str, keep: int):
    """numpy's full eigh of the dense Laplacian: eigenvalues, kept set, and how unique it is."""
    laplacian = dense_laplacian(normalize_rows(x), similarity).numpy()
    values, vectors = np.linalg.eigh(laplacian)
    fiedler = np.sort(np.abs(vectors[:, 1]))[::-1]
    gap = min(values[1] - values[0], values[2] - values[1])
    margin = fiedler[keep - 1] - fiedler[keep]
    return values, set(np.argsort(np.abs(vectors[:, 1]))[-keep:].tolist()), gap, margin


def fast_kept(x: torch.Tensor, similarity: str, keep: int):
    values, vectors = smallest_eigenpairs(normalize_rows(x), similarity, "lanczos")
    return values.numpy(), set(torch.topk(vectors[:, 1].abs(), keep).indices.tolist())


CASES = [  # n, d, seed, signed, zero row
    (64, 16, 0, False, False),
    (100, 2048, 1, False, False),
    (256, 512, 2, False, False),
    (DENSE_BELOW + 64 // 12, 64, 3, False, False),  # the first size the Lanczos path takes
    (500, 16, 4, True, False),
    (600, 512, 5, True, True),  # signed + an isolated vertex: lambda2 < 0 is still unique
    (1024, 512, 6, False, False),
]


@pytest.mark.parametrize(("n", "d", "seed", "signed", "zero_row"), CASES)
def test_fast_solver_keeps_what_algorithm_1_keeps(n, d, seed, signed, zero_row):
    x = features(n, d, seed, signed)
    if zero_row:
        x[n // 3] = 0.0
    paper = set(saln_algorithm1(x, 0.8).tolist())
    values_np, reference, gap, margin = dense_reference(x, "cosine", len(paper))
    scale = max(1.0, np.abs(values_np).max())
    assert gap > 1e-6 * scale and margin > 1e-9, "the seed must give a unique Fiedler vector"
    assert reference == paper
    values, kept = fast_kept(x, "cosine", len(paper))
    assert kept == paper
    np.testing.assert_allclose(values, values_np[:3], rtol=0, atol=1e-9 * scale)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "d", "seed"), [(1024, 2048, 7), (800, 16, 8)])
def test_fast_solver_keeps_what_algorithm_1_keeps_large(n, d, seed):
    test_fast_solver_keeps_what_algorithm_1_keeps(n, d, seed, False, False)


@pytest.mark.parametrize("similarity", ["clip", "shift"])
@pytest.mark.parametrize(
    ("n", "seed", "zero_row"), [(200, 10, False), (512, 11, False), (450, 12, True)]
)
def test_fast_solver_matches_dense_eigh_for_proper_laplacians(similarity, n, seed, zero_row):
    x = features(n, 64, seed, signed=True)
    if zero_row:
        x[7] = 0.0
    keep = int(n * 0.2)
    values_np, reference, gap, margin = dense_reference(x, similarity, keep)
    scale = max(1.0, np.abs(values_np).max())
    if (
        zero_row and similarity == "clip"
    ):  # isolated vertex: lambda = 0 twice, no unique Fiedler vector
        values, _ = fast_kept(x, similarity, keep)
        np.testing.assert_allclose(values, values_np[:3], rtol=0, atol=1e-9 * scale)
        assert abs(values[1]) < 1e-9
        return
    assert gap > 1e-6 * scale and margin > 1e-9, "the seed must give a unique Fiedler vector"
    values, kept = fast_kept(x, similarity, keep)
    assert kept == reference
    np.testing.assert_allclose(values, values_np[:3], rtol=0, atol=1e-9 * scale)
    assert values[0] > -1e-9 * scale  # a proper graph Laplacian is positive semi-definite


def test_selector_with_fast_solver_equals_algorithm_1_and_is_reproducible():
    x = features(512, 256, 13)  # 512 * (1 - 0.8) keeps 102 under both conventions
    batch = Batch(torch.arange(512), x.float(), torch.zeros(512, dtype=torch.long))
    view = BatchView(batch, torch.nn.Identity(), ViewSources(pretrained_features=lambda i: x[i]))
    selector = SELECTORS["saln"](features="pretrained", solver="lanczos")
    first = selector.select(batch, view)
    again = selector.select(
        batch,
        BatchView(batch, torch.nn.Identity(), ViewSources(pretrained_features=lambda i: x[i])),
    )
    assert first.positions.tolist() == sorted(saln_algorithm1(x, 0.8).tolist())
    assert first.positions.tolist() == again.positions.tolist()
    assert first.diagnostics == again.diagnostics
    assert first.diagnostics["fiedler_gap"] > 0


def test_isolated_vertices_give_a_repeated_zero_eigenvalue():
    x = features(500, 32, 14)
    x[[3, 250]] = 0.0
    values, vectors = smallest_eigenpairs(normalize_rows(x), "cosine", "lanczos")
    assert np.all(np.isfinite(vectors.numpy()))
    np.testing.assert_allclose(
        values.numpy(), [0.0, 0.0, 0.0], atol=1e-9
    )  # 1 on the rest, e_3, e_250
    np.testing.assert_allclose(np.linalg.norm(vectors.numpy(), axis=0), 1.0)


def test_lanczos_survives_an_invariant_subspace():
    """Identical rows: L = n I - 1 1^T, every Krylov step breaks down; the answer is still exact."""
    n = 400
    f = np.tile(np.array([[0.6, 0.8]]), (n, 1))
    values, vectors = _lanczos(f, "cosine", 3)
    np.testing.assert_allclose(values, [0.0, n, n], atol=1e-9 * n)
    assert np.all(np.isfinite(vectors))


# -- the benchmark command --------------------------------------------------------------------------------
def check_results(out, sections):
    results = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    assert results["schema"] == SCHEMA_VERSION and results["quick"] is True
    for key in ("cpu", "cores", "torch", "device", "torch_threads"):
        assert results["machine"][key] not in (None, "")
    assert not results["errors"], results["errors"]
    assert {t["status"] for t in results["targets"]} <= {"PASS", "MISS", "n/a"}
    assert any(t["target"].startswith("SALN step") for t in results["targets"])
    assert "## Targets" in markdown and results["machine"]["cpu"] in markdown
    stat_keys = {"median", "q1", "q3", "min", "max", "n"}
    if "saln" in sections:
        rows = results["saln_vs_algorithm1"]
        assert {(r["B"], r["d"], r["features"]) for r in rows} >= {(256, 512, "relu")}
        for r in rows:
            assert set(r["alg1_ms"]) == stat_keys and r["speedup"]["median"] > 0
            assert r["identical"] + r["ambiguous"] <= r["rounds"]
        assert "## 1. SALN" in markdown
    if "selectors" in sections:
        rows = results["selector_overhead"]
        assert {r["selector"] for r in rows} >= {
            "none",
            "saln (pixels)",
            "saln (pretrained, cached)",
            "jest",
            "rho",
        }
        assert all(r["fraction_of_step"] >= 0 and 0 < r["kept_fraction"] <= 1 for r in rows)
        assert "## 2. Selection cost" in markdown
    if "runner" in sections:
        rows = results["runner_vs_plain"]
        assert rows and all(r["images_per_s"]["runner"]["median"] > 0 for r in rows)
        assert all(r["best_plain"].startswith("plain_w") for r in rows)
        assert "## 3. Runner" in markdown
    if "memory" in sections:
        rows = results["peak_memory"]
        assert len(rows) == 2 and all(r["returncode"] == 0 and r["max_rss_mb"] > 50 for r in rows)
        assert "## 4. Peak memory" in markdown
    if "selective" in sections:
        rows = results["selective_backward"]
        assert rows and all(r["cheaper"] for r in rows)
        assert "## 5." in markdown
    if "epochs" in sections:
        rows = results["epoch_times"]
        assert rows and all(r["seconds"]["wall"]["first"] > 0 for r in rows)
        assert all(r["same_numbers"] for r in rows if "same_numbers" in r)
        assert "## 6. Epoch time" in markdown
    if "precision" in sections:
        rows = {r["variant"]: r for r in results["precision"]}
        assert set(rows) == {"fp32", "fp32 + channels_last", "bf16", "bf16 + channels_last"}
        assert all(r["step_ms"]["median"] > 0 and r["speedup_vs_fp32"]["n"] for r in rows.values())
        assert rows["fp32"]["first_loss_rel_diff"] == 0
        # the same computation in another memory layout; bf16 keeps about 3 significant digits
        assert rows["fp32 + channels_last"]["first_loss_rel_diff"] < 1e-4
        assert rows["bf16"]["first_loss_rel_diff"] < 0.05
        assert "## 8. bf16 autocast" in markdown
    if "startup" in sections:
        rows = {r["case"]: r for r in results["startup"]}
        for case in ("misspelt key", "wrong choice", "wrong value"):
            assert rows[case]["exit"] == 2 and rows[case]["stderr_lines"] == 1, rows[case]
            assert not rows[case]["directory_created"]
        assert rows["--help"]["exit"] == 0 and all(r["seconds"]["n"] for r in rows.values())
        assert any(t["target"].startswith("saln-train trainer.epoch=3") for t in results["targets"])
        assert "## 9. Start-up time" in markdown


def test_quick_benchmark_writes_both_files(tmp_path, capsys):
    sections = ("saln", "runner", "selective")
    assert main(["--quick", "--out", str(tmp_path), "--only", ",".join(sections)]) == 0
    check_results(tmp_path, sections)
    assert "| target | required | measured | status |" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_benchmark_runs_every_section(tmp_path):
    # the epoch-time section needs the real MNIST unpacked (`make mnist`; CI does it)
    sections = tuple(s for s in SECTION_NAMES if s != "epochs" or mnist_data_dir() is not None)
    main(["--quick", "--out", str(tmp_path), "--only", ",".join(sections)])
    check_results(tmp_path, sections)


@pytest.mark.slow
def test_quick_benchmark_times_the_start_up(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--only", "startup"]) == 0
    check_results(tmp_path, ("startup",))


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--quick", "--out", str(tmp_path), "--only", "saln,nope"])


def test_only_reruns_some_sections_and_keeps_the_others(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--only", "saln"]) == 0
    first = json.loads((tmp_path / "results.json").read_text())
    assert main(["--quick", "--out", str(tmp_path), "--only", "selective"]) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["saln_vs_algorithm1"] == first["saln_vs_algorithm1"]
    assert merged["selective_backward"] and merged["updated"]["sections"] == ["selective"]
    assert set(merged["sections"]) == {"saln", "selective"}
    assert "re-run on" in (tmp_path / "results.md").read_text()
