"""The Fiedler-vector solver behind SALN (saln_exp.spectral), against the paper's Algorithm 1.

Property tests: on seeded batches whose Fiedler vector is unique (a gap on both sides of lambda2
and no tie at the top-k cut, as `saln_algorithm1_float64` decides it), the solver must keep
exactly the samples Algorithm 1 keeps. Features go in as float64 so Algorithm 1 itself is
computed without float32 rounding. The references share no code with the solver: the oracle for
cosine similarities, a plain numpy Laplacian for the clip / shift variants.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oracles import saln_algorithm1, saln_algorithm1_float64
from saln_exp import spectral
from saln_exp.selectors import SELECTORS, Batch, BatchView, ViewSources
from saln_exp.spectral import dense_below, normalize_rows, smallest_eigenpairs


def features(n: int, d: int, seed: int, signed: bool = False, rank: int = 8) -> torch.Tensor:
    """Correlated backbone-like rows: low rank plus noise, post-ReLU unless signed."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g, dtype=torch.float64)
    x = z @ torch.randn(rank, d, generator=g, dtype=torch.float64) / rank**0.5
    x = x + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x if signed else torch.relu(x)


def numpy_laplacian(x: np.ndarray, similarity: str) -> np.ndarray:
    """L = diag(S 1) - S of the clip / shift variants, written out in numpy."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    s = unit @ unit.T
    s = np.maximum(s, 0.0) if similarity == "clip" else (s + 1.0) / 2.0
    return np.diag(s.sum(axis=1)) - s


def solve(x: torch.Tensor, similarity: str, keep: int):
    """The solver's three smallest eigenvalues and kept set."""
    values, vectors = smallest_eigenpairs(normalize_rows(x), similarity, "lanczos", keep=keep)
    return values.numpy(), set(torch.topk(vectors[:, 1].abs(), keep).indices.tolist())


def check_values(values: np.ndarray, exact: np.ndarray) -> None:
    """The Fiedler value to float64 precision; the others to the solver's VALUE_TOL (they are
    Ritz values, float32's where float32 decided the kept set)."""
    scale = max(1.0, np.abs(exact).max())
    assert abs(values[1] - exact[1]) <= 1e-9 * scale
    np.testing.assert_allclose(values, exact[:3], rtol=0, atol=2 * spectral.VALUE_TOL * scale)


CASES = [  # n, d, seed, signed, zero row
    (64, 16, 0, False, False),
    (100, 2048, 1, False, False),
    (256, 512, 2, False, False),
    (dense_below(64), 64, 3, False, False),  # the first size the Krylov path takes
    (500, 16, 4, True, False),
    (600, 512, 5, True, True),  # signed + an isolated vertex: lambda2 < 0 is still unique
    (1024, 512, 6, False, False),
]


@pytest.mark.parametrize(("n", "d", "seed", "signed", "zero_row"), CASES)
def test_solver_keeps_what_algorithm_1_keeps(n, d, seed, signed, zero_row):
    x = features(n, d, seed, signed)
    if zero_row:
        x[n // 3] = 0.0
    paper = set(saln_algorithm1(x, 0.8).tolist())
    exact = saln_algorithm1_float64(x.numpy(), 0.8)
    assert exact["unique"], "the seed must give a unique Fiedler vector"
    assert exact["kept"] == paper
    values, kept = solve(x, "cosine", len(paper))
    assert kept == paper
    check_values(values, exact["eigenvalues"])


def random_batch(seed: int) -> tuple[torch.Tensor, float]:
    """A batch of random size, width, sign and cluster structure, and a filter ratio."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(dense_below(64), 720))
    d = int(rng.choice([32, 64, 256, 512, 1024]))
    rank = int(rng.choice([2, 8, 32]))
    return features(n, d, 1000 + seed, signed=bool(rng.integers(2)), rank=rank), float(
        rng.choice([0.5, 0.8, 0.9])
    )


def test_solver_keeps_what_algorithm_1_keeps_on_many_random_batches():
    """Every non-degenerate batch of 60 random ones: exactly Algorithm 1's kept set."""
    decided = 0
    for seed in range(60):
        x, ratio = random_batch(seed)
        exact = saln_algorithm1_float64(x.numpy(), ratio)
        if not exact["unique"]:
            continue
        decided += 1
        values, kept = solve(x, "cosine", len(exact["kept"]))
        assert kept == exact["kept"] == set(saln_algorithm1(x, ratio).tolist()), seed
        check_values(values, exact["eigenvalues"])
    assert decided >= 55  # random features almost never tie


@pytest.mark.slow
@pytest.mark.parametrize(("n", "d", "seed"), [(1024, 2048, 7), (800, 16, 8), (1500, 256, 9)])
def test_solver_keeps_what_algorithm_1_keeps_large(n, d, seed):
    test_solver_keeps_what_algorithm_1_keeps(n, d, seed, False, False)


@pytest.mark.parametrize("similarity", ["clip", "shift"])
@pytest.mark.parametrize(
    ("n", "seed", "zero_row"), [(200, 10, False), (512, 11, False), (450, 12, True)]
)
def test_solver_matches_dense_eigh_for_proper_laplacians(similarity, n, seed, zero_row):
    x = features(n, 64, seed, signed=True)
    if zero_row:
        x[7] = 0.0
    keep = int(n * 0.2)
    values_np, vectors_np = np.linalg.eigh(numpy_laplacian(x.numpy(), similarity))
    scale = max(1.0, np.abs(values_np).max())
    if zero_row and similarity == "clip":  # isolated vertex: lambda = 0 twice, no unique vector
        values, _ = solve(x, similarity, keep)
        np.testing.assert_allclose(values, values_np[:3], rtol=0, atol=1e-9 * scale)
        assert abs(values[1]) < 1e-9
        return
    magnitude = np.abs(vectors_np[:, 1])
    order = np.argsort(magnitude)
    margin = magnitude[order[-keep]] - magnitude[order[-keep - 1]]
    gap = min(values_np[1] - values_np[0], values_np[2] - values_np[1])
    assert gap > 1e-6 * scale and margin > 1e-9, "the seed must give a unique Fiedler vector"
    values, kept = solve(x, similarity, keep)
    assert kept == set(order[-keep:].tolist())
    check_values(values, values_np)
    assert values[0] > -1e-9 * scale  # a proper graph Laplacian is positive semi-definite


def test_selector_with_the_solver_equals_algorithm_1_and_is_reproducible():
    x = features(512, 256, 13)  # 512 * (1 - 0.8) keeps 102 under both conventions
    batch = Batch(torch.arange(512), x.float(), torch.zeros(512, dtype=torch.long))

    def view():
        return BatchView(
            batch, torch.nn.Identity(), ViewSources(pretrained_features=lambda i: x[i])
        )

    selector = SELECTORS["saln"](features="pretrained", solver="lanczos")
    first, again = selector.select(batch, view()), selector.select(batch, view())
    assert first.positions.tolist() == sorted(saln_algorithm1(x, 0.8).tolist())
    assert first.positions.tolist() == again.positions.tolist()
    assert first.diagnostics == again.diagnostics
    assert first.diagnostics["fiedler_gap"] > 0


class ProductCounter:
    """Counts the products with L the Krylov solve makes, by precision."""

    def __init__(self, monkeypatch):
        self.counts = {np.float32: 0, np.float64: 0}
        apply = spectral._Laplacian.apply

        def counted(laplacian, dtype):
            product = apply(laplacian, dtype)

            def count(v):
                self.counts[dtype] += 1
                return product(v)

            return count

        monkeypatch.setattr(spectral._Laplacian, "apply", counted)


def test_the_krylov_solve_stops_once_the_kept_set_is_decided(monkeypatch):
    """B = 1024, d = 512: a few dozen float32 products decide the kept set (a solve to full
    precision takes about twice as many), checked by one float64 product; the vector is then
    exact to well under half the margin at the cut, but not to machine precision."""
    counter = ProductCounter(monkeypatch)
    x = features(1024, 512, 21)
    exact = saln_algorithm1_float64(x.numpy(), 0.8)
    keep = len(exact["kept"])
    assert exact["unique"] and exact["margin"] > 1e-5
    values, vectors = smallest_eigenpairs(normalize_rows(x), "cosine", "lanczos", keep=keep)
    assert set(torch.topk(vectors[:, 1].abs(), keep).indices.tolist()) == exact["kept"]
    assert counter.counts[np.float64] == 1  # the check of the float32 answer
    assert counter.counts[np.float32] <= 40
    laplacian = numpy_laplacian_cosine(x.numpy())
    v = vectors[:, 1].numpy()
    residual = np.linalg.norm(laplacian @ v - values[1].item() * v)
    assert residual > 1e-9 * exact["eigenvalues"][2]  # not converged further than needed
    _, u = np.linalg.eigh(laplacian)
    error = np.abs(np.abs(v) - np.abs(u[:, 1])).max()
    assert error < exact["margin"] / 2


def numpy_laplacian_cosine(x: np.ndarray) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = unit @ unit.T
    return np.diag(s.sum(axis=1)) - s


def test_a_cut_too_close_for_float32_is_decided_in_float64(monkeypatch):
    """A batch whose k-th and (k+1)-th largest |v_i| are 1e-7 apart (seed found by searching):
    float32 cannot separate them, the float64 solve does, and the kept set is Algorithm 1's."""
    x = features(400, 64, 295)
    exact = saln_algorithm1_float64(x.numpy(), 0.8)
    assert exact["unique"] and exact["margin"] < 1e-6
    counter = ProductCounter(monkeypatch)
    values, kept = solve(x, "cosine", len(exact["kept"]))
    assert counter.counts[np.float64] > 1  # more than the check: the float64 solve ran
    assert kept == exact["kept"] == set(saln_algorithm1(x, 0.8).tolist())
    check_values(values, exact["eigenvalues"])


def test_isolated_vertices_give_a_repeated_zero_eigenvalue():
    x = features(500, 32, 14)
    x[[3, 250]] = 0.0
    values, vectors = smallest_eigenpairs(normalize_rows(x), "cosine", "lanczos", keep=100)
    assert np.all(np.isfinite(vectors.numpy()))
    np.testing.assert_allclose(
        values.numpy(), [0.0, 0.0, 0.0], atol=1e-9
    )  # 1 on the rest, e_3, e_250
    np.testing.assert_allclose(np.linalg.norm(vectors.numpy(), axis=0), 1.0)


def test_repeated_rows_keep_their_repeated_eigenvalue():
    """Equal rows a, b give the eigenpair (degree, e_a - e_b) once per extra copy: a Krylov space
    from one start vector would hold it once, hiding lambda2 = lambda3 (a zero Fiedler gap).
    With shifted similarities all-zero rows are such copies, and the least connected ones."""
    x = features(300, 64, 15)
    x[[5, 50, 100]] = 0.0
    values, _ = smallest_eigenpairs(normalize_rows(x), "shift", "lanczos", keep=60)
    exact = np.linalg.eigvalsh(numpy_laplacian(x.numpy(), "shift"))
    np.testing.assert_allclose(values.numpy(), exact[:3], atol=1e-9 * exact.max())
    assert values[2] - values[1] < 1e-9 * exact.max()


def test_identical_rows_are_exact():
    """All rows equal: L = n I - 1 1^T, every Krylov step closes at once; the answer is exact."""
    n = 400
    x = torch.tensor([[0.6, 0.8]], dtype=torch.float64).repeat(n, 1)
    values, vectors = smallest_eigenpairs(x, "cosine", "lanczos", keep=80)
    np.testing.assert_allclose(values.numpy(), [0.0, n, n], atol=1e-9 * n)
    assert np.all(np.isfinite(vectors.numpy()))


def test_normalize_rows_converts_in_one_pass_with_the_same_bits():
    """The float64 unit rows of float32 features equal those of converting first."""
    g = torch.Generator().manual_seed(16)
    for n, d in ((1, 1), (7, 3), (256, 512), (1000, 33)):
        x = torch.randn(n, d, generator=g).relu()
        x[0] = 0.0
        converted = x.numpy().astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", converted, converted))
        norms[0] = 1.0
        reference = torch.from_numpy(converted / norms[:, None])
        assert torch.equal(normalize_rows(x, dtype=torch.float64), reference)
