"""The Fiedler vector of a batch's similarity graph, computed as far as SALN's kept set needs.

SALN's Algorithm 1: S = similarity of the batch's feature rows (cosine, S_ii = 1), D = diag(S 1),
L = D - S, v = eigenvector of the second smallest eigenvalue of L (the Fiedler vector), keep the
k largest |v_i|. Algorithm 1 takes v from a full eigendecomposition; only v decides the kept set,
and only to the precision that separates the k-th from the (k+1)-th largest |v_i|. Solvers:

- `eigh`: torch's full dense decomposition, on the features' device (the default on GPUs).
- `lanczos` (CPU): batches of fewer than `dense_below(d)` rows take LAPACK's MRRR for the three
  smallest eigenpairs of the dense L (`_dense_smallest`). Larger ones take `_krylov`, a Lanczos
  solve that
  1. never forms S: with row-normalised features F, L v = D v - F (F^T v) and
     D = diag(F (F^T 1)), O(n d) a step instead of O(n^2);
  2. deflates the constant vector: every row of L sums to 0, so L 1 = 0 exactly and
     (0, 1 / sqrt(n)) is an eigenpair known in advance (for every `similarity`). The Krylov space
     is kept orthogonal to it, which leaves two eigenpairs to find instead of three;
  3. stops as soon as the kept set is decided: the Fiedler vector's error is at most
     sqrt(2) ||r|| / gap (Davis-Kahan: r the residual, gap the distance to the neighbouring
     eigenvalues), and once that is under half the margin between the k-th and (k+1)-th
     largest |v_i| no further digit can change the kept set. The next eigenvalue (the gap's
     other end, logged as the Fiedler gap) is converged to VALUE_TOL alongside;
  4. runs in float32 first (a product reads half the memory: 3.5x faster at B = 1024, d = 512)
     and checks the answer with a float64 residual; only where float32 cannot separate the cut
     (margins under about 1e-5 at B = 1024: a sixth of realistic batches, nearly every batch of
     MNIST pixels) does a float64 solve refine it, started from the float32 vector (a few steps).
  Batches with two equal feature rows take the dense solve: their repeated eigenvalue would
  appear once in a Krylov space from one start vector.
  Full reorthogonalisation keeps the basis orthogonal (plain Lanczos loses it and repeats
  eigenvalues). Plain power iteration is not used: it converges to the wrong end of the
  spectrum without a shift and too slowly with one. scipy's ARPACK (`eigsh`) finds the same
  vectors but to a fixed tolerance, which either over-solves or needs a second solve: on the same
  deflated float32 operator it took 1.3x as long at B = 1024 and 1.1x at B = 256 (d = 512), and
  5x / 2.2x asked for three eigenpairs to full precision.
The solve runs with numpy's BLAS pinned to one thread (`single_blas_thread`).

Signed cosine similarities can make L indefinite; the rule (second smallest eigenvalue) stays
the paper's, and `similarity=clip` (negative similarities set to 0) or `shift` ((S + 1) / 2)
give a proper graph Laplacian instead.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch
from scipy.linalg import lapack
from threadpoolctl import ThreadpoolController
from torch import Tensor

log = logging.getLogger(__name__)

# Below `dense_below(d)` rows the dense solve for 3 eigenpairs beats the Lanczos solve: the dense
# cost grows as n^2 d + n^3, the Lanczos cost as n d per step with a few dozen steps and a fixed
# Python cost per step. Crossover measured on 2 cores: about 120 rows at d = 64, 130-160 at
# d = 512, 140-160 at d = 1024, 200-300 at d = 2048 (the two solves level in between). Batches
# of 64 (the SALN paper's) always take the dense solve.
DENSE_BELOW = 112
# Lanczos steps before the first look at the Ritz pairs (each look costs a small tridiagonal
# eigensolve and an n x steps product); then the next look comes when the residuals, shrinking
# as fast as since the last look, should be small enough (CHECK_EVERY steps when there is no
# rate yet, at most MAX_LOOK_AHEAD)
FIRST_CHECK = 8
CHECK_EVERY = 2
MAX_LOOK_AHEAD = 8
# At most this many Lanczos steps (a basis of MAX_STEPS x n numbers); a solve that needs more
# (never seen on real features) falls back to the dense solver.
MAX_STEPS = 300
# A Lanczos residual below FLOOR * eps * ||L|| cannot be trusted further in that precision.
FLOOR = 1.0
# The eigenvalue after the Fiedler one (logged as the Fiedler gap) is computed to this relative
# precision (or float32's where that sufficed for the vector: about 1e-7)
VALUE_TOL = 1e-6
_BLAS: ThreadpoolController | None = None


def normalize_rows(features: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Unit rows (in `dtype`, default the input's); an all-zero row stays zero (similarity 0 to
    everything, like sklearn's).

    CPU float tensors go through numpy: single-threaded elementwise work, where torch's
    OpenMP threads on a busy 2-core machine spend more time synchronising (or waking up) than
    computing (measured on a 256 x 512 batch: 0.15 ms here; 1 ms median, 37 ms upper quartile
    in torch). Converting with `dtype` here rather than `.double()` before avoids one more such
    torch op."""
    numpy_dtypes = {torch.float32: np.float32, torch.float64: np.float64}
    if (
        features.device.type == "cpu"
        and features.dtype in numpy_dtypes
        and (dtype is None or dtype in numpy_dtypes)
    ):
        f = features.detach().numpy()
        out = f.dtype if dtype is None else numpy_dtypes[dtype]
        # the products and the division in `out` without a converted copy of f first (the same
        # bits as converting first: a float32 product is exact in float64)
        norms = np.sqrt(np.einsum("ij,ij->i", f, f, dtype=out))
        norms[norms == 0] = 1.0  # a zero row divided by 1 stays zero
        return torch.from_numpy(np.divide(f, norms[:, None], dtype=out))
    if dtype is not None:
        features = features.to(dtype)
    norms = features.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, features / norms.clamp_min(1e-300), torch.zeros_like(features))


def dense_laplacian(unit: Tensor, similarity: str) -> Tensor:
    s = unit @ unit.T
    if similarity == "clip":
        s = s.clamp_min(0.0)
    elif similarity == "shift":
        s = (s + 1.0) / 2.0
    return torch.diag(s.sum(dim=1)) - s


def smallest_eigenpairs(
    unit: Tensor, similarity: str, solver: str, keep: int, k: int = 3
) -> tuple[Tensor, Tensor]:
    """The k smallest eigenvalues (ascending) and eigenvectors (columns) of the batch Laplacian;
    column 1 is the Fiedler vector, computed until its `keep` largest |v_i| are decided.

    `eigh`: torch's full dense eigendecomposition, on the features' device. Otherwise (CPU):
    isolated vertices split off exactly, then the dense 3-eigenpair LAPACK solve for small
    batches or `_krylov` for large ones, in numpy with BLAS pinned to one thread. The Krylov
    path's other columns are only as converged as the Fiedler vector needed; its eigenvalues
    are float64 Rayleigh quotients (the Fiedler one) or Ritz values of the last solve (float32's
    precision, about 1e-6 relative, where float32 sufficed).
    """
    n = unit.shape[0]
    k = min(k, n)
    if solver == "eigh" or n <= k + 1:
        values, vectors = torch.linalg.eigh(dense_laplacian(unit.double(), similarity))
        return values[:k], vectors[:, :k]
    f = unit.detach().double().cpu().numpy()
    with single_blas_thread():
        values, vectors = _smallest_with_isolated(f, similarity, k, keep)
    return torch.from_numpy(values), torch.from_numpy(vectors)


def single_blas_thread():
    """Pin numpy's and scipy's OpenBLAS to one thread for the solve.

    Each step is a matrix-vector product of a few MB: a second thread gains nothing, while
    OpenBLAS's threads spinning against torch's OpenMP threads on a small CPU cost 10-100x
    (measured on 2 cores: 0.06 ms vs 24 ms median for one 1024 x 512 product).
    """
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _smallest_with_isolated(
    f: np.ndarray, similarity: str, k: int, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """A zero feature row is an isolated vertex (its row and column of L are zero) unless
    similarities are shifted: its eigenpair (0, e_i) is exact, and the rest of the spectrum is
    that of the Laplacian of the other rows. Splitting it off keeps the Krylov solver away from
    a repeated eigenvalue 0, which it could not resolve (one vector per eigenvalue)."""
    n = f.shape[0]
    isolated = ~f.any(axis=1) if similarity != "shift" else np.zeros(n, dtype=bool)
    if not isolated.any():
        return _smallest_connected(f, similarity, k, keep)
    live = np.flatnonzero(~isolated)
    values = [np.zeros(0)]
    vectors = [np.zeros((n, 0))]
    if len(live):
        live_values, live_vectors = _smallest_connected(
            f[live], similarity, min(k, len(live)), min(keep, len(live) - 1)
        )
        padded = np.zeros((n, len(live_values)))
        padded[live] = live_vectors
        values.append(live_values)
        vectors.append(padded)
    lone = np.flatnonzero(isolated)[:k]
    values.append(np.zeros(len(lone)))
    vectors.append(np.eye(n)[:, lone])
    values_all, vectors_all = np.concatenate(values), np.concatenate(vectors, axis=1)
    order = np.argsort(values_all, kind="stable")[:k]
    return values_all[order], vectors_all[:, order]


def dense_below(d: int) -> int:
    """Batches with fewer rows than this (features of width d) take the dense solve."""
    return DENSE_BELOW + d // 24


def dense_is_faster(n: int, d: int, k: int = 3) -> bool:
    """Whether `solver=lanczos` takes the dense 3-eigenpair path for an n x d batch."""
    return n < max(dense_below(d), 4 * k)


def _smallest_connected(
    f: np.ndarray, similarity: str, k: int, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    if dense_is_faster(*f.shape, k) or keep < 1:
        return _dense_smallest(f, similarity, k)
    laplacian = _Laplacian(f, similarity)
    if laplacian.has_repeated_rows():
        # m equal rows give an eigenvalue of multiplicity m - 1 (vectors e_a - e_b), which a
        # Krylov space from one start vector holds only once: the dense solve sees them all
        return _dense_smallest(f, similarity, k)
    try:
        found = _krylov(laplacian, keep)
    except np.linalg.LinAlgError:  # LAPACK failed on a tridiagonal (never seen)
        found = None
    if found is None:
        log.warning(
            "SALN: the Lanczos solve stopped short on a batch of %d; using the dense solver",
            f.shape[0],
        )
        return _dense_smallest(f, similarity, k)
    return found


def _laplacian_np(f: np.ndarray, similarity: str) -> np.ndarray:
    s = f @ f.T
    if similarity == "clip":
        np.maximum(s, 0.0, out=s)
    elif similarity == "shift":
        s = (s + 1.0) / 2.0
    laplacian = -s
    laplacian[np.diag_indices_from(laplacian)] += s.sum(axis=1)
    return laplacian


def _dense_smallest(f: np.ndarray, similarity: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """LAPACK's MRRR (dsyevr) for the k smallest eigenpairs only: the same tridiagonal reduction
    as a full `eigh`, without computing and back-transforming all n eigenvectors."""
    values, vectors = scipy.linalg.eigh(
        _laplacian_np(f, similarity), subset_by_index=[0, k - 1], driver="evr"
    )
    return values, vectors


class _Laplacian:
    """v -> L v without forming S (except for `clip`, whose max(S, 0) has no low-rank form), in
    float64 or float32. Degrees are always summed in float64."""

    def __init__(self, f: np.ndarray, similarity: str):
        self.similarity = similarity
        self.features = f
        self.n = f.shape[0]
        if similarity == "clip":
            s = f @ f.T
            np.maximum(s, 0.0, out=s)
            self.degree, self.matrix = s.sum(axis=1), s
        else:
            column_sum = f.sum(axis=0)
            self.degree = f @ column_sum
            if similarity == "shift":  # S' = (S + 1 1^T) / 2
                self.degree = (self.degree + self.n) / 2.0
            self.matrix = f
        self._ops: dict[type, object] = {}

    def has_repeated_rows(self) -> bool:
        """Whether two feature rows are equal. Equal rows have bit-equal degrees, so only rows
        whose degrees tie are compared."""
        if np.all(np.diff(np.sort(self.degree))):
            return False  # no two degrees tie: the common case, decided by one sort
        _, group, count = np.unique(self.degree, return_inverse=True, return_counts=True)
        for g in np.flatnonzero(count > 1):
            rows = self.features[group == g]
            if len(np.unique(rows, axis=0)) < len(rows):
                return True
        return False

    def apply(self, dtype: type):
        """The product in `dtype` (the operands converted once)."""
        if dtype not in self._ops:
            degree = self.degree.astype(dtype, copy=False)
            m = self.matrix.astype(dtype, copy=False)
            mt = m.T  # numpy hands the transpose to BLAS without copying
            if self.similarity == "clip":
                self._ops[dtype] = lambda v: degree * v - m @ v
            elif self.similarity == "shift":
                self._ops[dtype] = lambda v: degree * v - (m @ (mt @ v) + v.sum()) / 2.0
            else:
                self._ops[dtype] = lambda v: degree * v - m @ (mt @ v)
        return self._ops[dtype]


@dataclass
class _Ritz:
    """The smallest Ritz pairs of the deflated Laplacian (on the complement of the constant
    vector) after some Lanczos steps."""

    values: np.ndarray  # ascending, up to 4
    residuals: np.ndarray  # ||L y - theta y|| estimates, one per pair
    scale: float  # about ||L||: the largest |Lanczos coefficient| seen
    coefficients: np.ndarray  # the Ritz vectors in the Lanczos basis (steps x pairs)
    basis: np.ndarray  # the Lanczos vectors (steps x n)
    known: dict[int, np.ndarray] = field(default_factory=dict)

    def vector(self, i: int) -> np.ndarray:
        """Ritz vector i (float64), computed when first asked for."""
        if i not in self.known:
            y = self.basis.T @ self.coefficients[:, i].astype(self.basis.dtype)
            self.known[i] = y.astype(np.float64)
        return self.known[i]

    def replace(self, i: int, value: float, vector: np.ndarray) -> None:
        self.values[i] = value
        self.known[i] = vector

    def eigenpairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole L's three smallest eigenpairs: these pairs and the deflated
        (0, 1/sqrt(n)), in ascending order (0 before an equal Ritz value)."""
        n = self.basis.shape[1]
        values = np.concatenate([[0.0], self.values])
        order = np.argsort(values, kind="stable")[:3]
        constant = np.full(n, 1.0 / np.sqrt(n))
        vectors = [constant if o == 0 else self.vector(o - 1) for o in order]
        return values[order], np.stack(vectors, axis=1)

    def fiedler_index(self) -> int | None:
        """Which pair is the Fiedler vector of the whole L, whose spectrum is these values and
        the deflated 0: the first if the deflated spectrum is nonnegative, the second if two
        values lie below 0, None if 0 itself (the constant vector) is the second smallest."""
        if self.values[0] >= 0:
            return 0
        if len(self.values) > 1 and self.values[1] < 0:
            return 1
        return None

    def value_error(self, i: int) -> float:
        """A bound on value i's distance to its eigenvalue: its residual, or residual^2 / gap
        where the gap to the neighbours is known."""
        residual, gap = self.residuals[i], self.gap(i)
        return residual if gap <= 0 else min(residual, residual**2 / gap)

    def gap(self, i: int) -> float:
        """Distance from value i to its neighbours among the deflated values (a Ritz
        neighbour's own uncertainty taken off it), the gap in the Davis-Kahan bound."""
        gaps = [
            abs(self.values[j] - self.values[i]) - self.residuals[j]
            for j in (i - 1, i + 1)
            if 0 <= j < len(self.values)
        ]
        return min(gaps) if gaps else 0.0


def _deciding_residual(vector: np.ndarray, gap: float, keep: int) -> float:
    """The residual under which the `keep` largest |v_i| of the exact eigenvector are those of
    `vector`: each |v_i| is within sqrt(2) ||r|| / gap of the exact one (Davis-Kahan), which
    must stay under half the margin between the k-th and (k+1)-th largest |v_i|."""
    a = np.abs(vector)
    n = len(a)
    if keep >= n:
        return np.inf
    cut = np.partition(a, [n - keep - 1, n - keep])
    margin = cut[n - keep] - cut[n - keep - 1]  # k-th largest minus (k+1)-th largest
    return max(gap, 0.0) * margin / (2.0 * np.sqrt(2.0))


def _shortfall(ritz: _Ritz, keep: int, floor: float) -> float:
    """How many times the residuals must still shrink: at most 1 once the kept set is decided
    and the next eigenvalue (the Fiedler gap's other end, and the gap in the bound) is known to
    VALUE_TOL, or the residuals that would decide them are at the precision `floor`. (Where the
    constant vector is the Fiedler vector every |v_i| ties: nothing to decide, the two values
    around 0 only need to be sure of their signs.)"""
    i = ritz.fiedler_index()
    if i is None:
        return float(ritz.residuals[:2].max() / floor)
    if i + 1 >= len(ritz.values):
        return np.inf
    deciding = max(floor, _deciding_residual(ritz.vector(i), ritz.gap(i), keep))
    return float(
        max(ritz.residuals[i] / deciding, ritz.value_error(i + 1) / (VALUE_TOL * ritz.scale))
    )


def _steps_to_next_look(shortfall: float, previous: tuple[int, float] | None, j: int) -> int:
    """When to look at the Ritz pairs again: when the shortfall, shrinking at the rate seen since
    the last look, should be gone (at least 1 step, at most MAX_LOOK_AHEAD)."""
    if previous is None or not np.isfinite(shortfall) or not np.isfinite(previous[1]):
        return CHECK_EVERY
    rate = (shortfall / previous[1]) ** (1.0 / (j - previous[0]))
    if not 0 < rate < 1:
        return CHECK_EVERY
    return int(min(MAX_LOOK_AHEAD, max(1, np.ceil(np.log(shortfall) / -np.log(rate)))))


def _lanczos(apply, start: np.ndarray, shortfall, first_look: int) -> _Ritz | None:
    """Lanczos on the complement of the constant vector, with full reorthogonalisation, until
    `shortfall(ritz, floor)` (how many times the residuals must still shrink; `floor` the
    working precision's residual floor, in `start`'s dtype) is at most 1. None if the Krylov space
    closes first (an invariant subspace: the few values found may not be the smallest) or after
    MAX_STEPS."""
    n = len(start)
    dtype = start.dtype
    eps = float(np.finfo(dtype).eps)
    steps = min(n - 1, MAX_STEPS)
    basis = np.empty((steps + 1, n), dtype)
    basis[0] = 1.0 / np.sqrt(n)  # the known eigenvector of 0, projected out of every step
    q = start - basis[0] * (basis[0] @ start)
    basis[1] = q / np.sqrt(q @ q)
    alpha, beta = np.empty(steps), np.empty(steps)
    scale = 0.0
    look, previous = first_look, None
    for j in range(1, steps + 1):
        q = basis[j]
        w = apply(q)
        alpha[j - 1] = q @ w
        done = basis[: j + 1]
        w -= done.T @ (done @ w)  # classical Gram-Schmidt, twice: orthogonal to working
        w -= done.T @ (done @ w)  # precision, the constant vector included
        beta[j - 1] = np.sqrt(w @ w)
        scale = max(scale, abs(alpha[j - 1]) + beta[j - 1])
        closed = beta[j - 1] <= 100 * eps * scale
        if closed or j == steps or j >= look:
            ritz = _ritz_pairs(alpha[:j], beta[:j], basis[1 : j + 1], scale)
            short = np.inf if ritz is None else shortfall(ritz, FLOOR * eps * scale)
            if short <= 1:
                return ritz
            if closed:
                return None
            look = j + _steps_to_next_look(short, previous, j)
            previous = (j, short)
        if j < steps:
            basis[j + 1] = w / beta[j - 1]
    return None


def _ritz_pairs(alpha, beta, lanczos_vectors, scale: float) -> _Ritz | None:
    """The four smallest Ritz pairs of the tridiagonal (alpha, beta[:-1]): up to the Fiedler
    pair, the next one and its upper neighbour. beta[-1] times a pair's last component is its
    residual norm."""
    j = len(alpha)
    if j < 2:
        return None
    values, s = _smallest_of_tridiagonal(alpha, beta[:-1], min(4, j))
    return _Ritz(values, np.abs(beta[-1] * s[-1]), scale, s, lanczos_vectors)


def _smallest_of_tridiagonal(diagonal, off_diagonal, count: int):
    """The `count` smallest eigenpairs of a symmetric tridiagonal matrix by LAPACK's MRRR
    (dstemr), called directly: at this size scipy's `eigh_tridiagonal` spends twice as long
    checking its arguments as LAPACK spends solving."""
    e = np.append(off_diagonal, 0.0)  # dstemr takes n off-diagonal entries, the last unused
    m, values, vectors, info = lapack.dstemr(diagonal, e, 2, 0.0, 0.0, 1, count)
    if info != 0 or m != count:
        raise np.linalg.LinAlgError(f"dstemr failed (info {info})")
    return values[:m], vectors[:, :m]


@functools.lru_cache(maxsize=16)
def _start_vector(n: int) -> np.ndarray:
    """The Lanczos start vector for n rows: random, but the same every time (selections are
    reproducible), and made once per batch size."""
    vector = np.random.default_rng(0).standard_normal(n)
    vector.flags.writeable = False
    return vector


def _krylov(laplacian: _Laplacian, keep: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The three smallest eigenvalues of L and eigenvectors for them (see the module docstring),
    or None where a Lanczos solve stops short."""
    start = _start_vector(laplacian.n)
    ritz = _lanczos(
        laplacian.apply(np.float32),
        start.astype(np.float32),
        lambda found, floor: _shortfall(found, keep, floor),
        FIRST_CHECK,
    )
    if ritz is None:
        return None
    i = ritz.fiedler_index()
    if i is not None:  # (else the constant vector is the Fiedler vector: every |v_i| ties)
        refined = _in_float64(ritz, i, laplacian.apply(np.float64), keep)
        if refined is None:
            return None
        ritz.replace(i, *refined)
    return ritz.eigenpairs()


def _in_float64(ritz: _Ritz, i: int, apply, keep: int) -> tuple[float, np.ndarray] | None:
    """The float32 solve's Fiedler pair i, checked with a float64 residual and, where that does
    not decide the kept set, refined by a float64 Lanczos solve started from it (its pair
    nearest the float32 value; the gap stays the float32 solve's, known to ~1e-7). None if that
    solve stops short."""
    v = ritz.vector(i) - ritz.vector(i).mean()  # exactly orthogonal to 1 again
    v /= np.sqrt(v @ v)
    lv = apply(v)
    theta = float(v @ lv)
    gap = ritz.gap(i)
    if np.sqrt(np.sum((lv - theta * v) ** 2)) <= _deciding_residual(v, gap, keep):
        return theta, v

    def nearest(found: _Ritz) -> int:
        return int(np.argmin(np.abs(found.values - theta)))

    def shortfall(found: _Ritz, floor: float) -> float:
        j = nearest(found)
        deciding = max(floor, _deciding_residual(found.vector(j), gap, keep))
        return float(found.residuals[j] / deciding)

    refined = _lanczos(apply, v, shortfall, first_look=2)
    if refined is None:
        return None
    j = nearest(refined)
    return float(refined.values[j]), refined.vector(j)
