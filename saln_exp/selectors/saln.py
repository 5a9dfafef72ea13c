"""SALN (Sharifi, Algorithm 1): keep the samples with the largest |Fiedler vector| entries of the
batch's similarity-graph Laplacian.

The rule is the paper's: S = cosine similarity of the feature rows (S_ii = 1), D = diag(S.sum(1)),
L = D - S, v = eigenvector of the second smallest eigenvalue, keep the k largest |v_i|.
Only the way it is computed differs, because only three eigenpairs are ever needed:
- `lanczos` (default on CPU): scipy's ARPACK Lanczos for the 3 smallest eigenpairs on a
  matrix-free operator. With row-normalised features F, L v = D v - F (F^T v) and
  D = diag(F (F^T 1)), so each iteration costs O(n d) and S is never formed. Small batches
  (under `DENSE_BELOW` + d / 12 rows) use a dense LAPACK solve for the 3 eigenpairs instead.
  Plain power iteration is not used: it converges to the wrong end of the spectrum without a
  shift and too slowly with one, and does not reproduce Algorithm 1's selections. (A
  hand-written Lanczos with full reorthogonalisation was measured about 2x faster than ARPACK
  here, but ARPACK already meets the speed targets: the library is kept.)
- `eigh`: the full dense eigendecomposition (float64), the default on GPUs where it is fast.
The third eigenvalue gives the Fiedler gap, logged so a degenerate (ambiguous) Fiedler vector
is visible. Signed cosine similarities can make L indefinite; `similarity=clip` (negative
similarities set to 0) or `shift` ((S + 1) / 2) give a proper graph Laplacian instead.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from threadpoolctl import ThreadpoolController
from torch import Tensor

from saln_exp.errors import ConfigError
from saln_exp.features import FeatureStore, check_backbone
from saln_exp.selectors.base import (
    FEATURE_SOURCES,
    Batch,
    BatchView,
    RunContext,
    Selector,
    ViewSources,
)

log = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "clip", "shift")
SOLVERS = ("auto", "lanczos", "eigh")
# Below DENSE_BELOW + d / 12 rows a dense LAPACK solve for the 3 eigenpairs beats Lanczos: the
# dense cost grows as n^2 d + n^3, Lanczos's as n d per product (crossover measured on 2 cores).
DENSE_BELOW = 192
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
        if dtype is not None:
            f = f.astype(numpy_dtypes[dtype], copy=False)
        norms = np.sqrt(np.einsum("ij,ij->i", f, f))
        norms[norms == 0] = 1.0  # a zero row divided by 1 stays zero
        return torch.from_numpy(f / norms[:, None])
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
    unit: Tensor, similarity: str, solver: str, k: int = 3
) -> tuple[Tensor, Tensor]:
    """The k smallest eigenvalues (ascending) and eigenvectors (columns) of the batch Laplacian.

    `eigh`: torch's full dense eigendecomposition, on the features' device. Otherwise (CPU):
    isolated vertices split off exactly, then a dense 3-eigenpair LAPACK solve for small batches
    or `_lanczos` for large ones, in float64 numpy with BLAS pinned to one thread (see
    `single_blas_thread`).
    """
    n = unit.shape[0]
    k = min(k, n)
    if solver == "eigh" or n <= k + 1:
        values, vectors = torch.linalg.eigh(dense_laplacian(unit.double(), similarity))
        return values[:k], vectors[:, :k]
    f = unit.detach().double().cpu().numpy()
    with single_blas_thread():
        values, vectors = _smallest_with_isolated(f, similarity, k)
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
    f: np.ndarray, similarity: str, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """A zero feature row is an isolated vertex (its row and column of L are zero) unless
    similarities are shifted: its eigenpair (0, e_i) is exact, and the rest of the spectrum is
    that of the Laplacian of the other rows. Splitting it off keeps the Krylov solver away from
    a repeated eigenvalue 0, which it could not resolve (one vector per eigenvalue)."""
    n = f.shape[0]
    isolated = ~f.any(axis=1) if similarity != "shift" else np.zeros(n, dtype=bool)
    if not isolated.any():
        return _smallest_connected(f, similarity, k)
    live = np.flatnonzero(~isolated)
    values = [np.zeros(0)]
    vectors = [np.zeros((n, 0))]
    if len(live):
        live_values, live_vectors = _smallest_connected(f[live], similarity, min(k, len(live)))
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


def dense_is_faster(n: int, d: int, k: int = 3) -> bool:
    """Whether `solver=lanczos` takes the dense 3-eigenpair path for an n x d batch."""
    return n < max(DENSE_BELOW + d // 12, 4 * k)


def _smallest_connected(f: np.ndarray, similarity: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    if dense_is_faster(*f.shape, k):
        return _dense_smallest(f, similarity, k)
    return _lanczos(f, similarity, k)


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


def _laplacian_operator(f: np.ndarray, similarity: str):
    """v -> L v without forming S (except for `clip`, whose max(S, 0) has no low-rank form)."""
    n = f.shape[0]
    if similarity == "clip":
        s = f @ f.T
        np.maximum(s, 0.0, out=s)
        degree = s.sum(axis=1)
        return lambda v: degree * v - s @ v
    ft = f.T  # numpy passes the transpose to BLAS without copying
    column_sum = ft.sum(axis=1)
    if similarity == "shift":  # (S + 11^T) / 2
        degree = (f @ column_sum + n) / 2.0
        return lambda v: degree * v - (f @ (ft @ v) + v.sum()) / 2.0
    degree = f @ column_sum
    return lambda v: degree * v - f @ (ft @ v)


def _lanczos(f: np.ndarray, similarity: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest eigenpairs by scipy's ARPACK (implicitly restarted Lanczos) on the
    matrix-free operator, to full precision (tol=0). ARPACK's default start vector is random,
    which would make selections irreproducible; a fixed seeded one is used (not the all-ones
    vector: it is an exact eigenvector of L and would stall the Krylov space)."""
    n = f.shape[0]
    operator = LinearOperator((n, n), matvec=_laplacian_operator(f, similarity), dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    try:
        values, vectors = eigsh(operator, k=k, which="SA", v0=v0, tol=0.0, maxiter=20 * n)
    except ArpackNoConvergence:
        log.warning("SALN: Lanczos did not converge on a batch of %d; using the dense solver", n)
        return _dense_smallest(f, similarity, k)
    order = np.argsort(values, kind="stable")
    return values[order], vectors[:, order]


class SALN(Selector):
    name = "saln"
    style = ("#0072B2", "D")  # colour and marker in every figure (report/style.py)

    def __init__(
        self,
        filter_ratio: float = 0.8,
        features: str = "pixels",
        similarity: str = "cosine",
        solver: str = "auto",
        backbone: str = "resnet50",
        backbone_weights: str | None = "IMAGENET1K_V1",
        feature_size: int | None = 224,
        download: bool = False,
        **common,
    ):
        super().__init__(filter_ratio=filter_ratio, **common)
        for key, value, allowed in (
            ("features", features, FEATURE_SOURCES),
            ("similarity", similarity, SIMILARITIES),
            ("solver", solver, SOLVERS),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"selector.{key} must be one of {allowed} for selector=saln, got {value!r}"
                )
        if features == "pretrained":
            check_backbone(backbone, backbone_weights)
        self.feature_source = features
        self.similarity = similarity
        self.solver = solver
        self.backbone = backbone
        self.backbone_weights = backbone_weights
        self.feature_size = feature_size
        self.download = download
        self._warned_indefinite = False

    @classmethod
    def shrink_for_smoke(cls, options) -> None:
        super().shrink_for_smoke(options)
        if options.get("features") == "pretrained":  # no weights offline: the architecture is
            options.backbone_weights = None  # what is smoke-tested, on the stand-in's 32x32
            options.feature_size = None

    def prepare(self, ctx: RunContext) -> ViewSources:
        if self.solver == "auto":
            self.solver = "eigh" if ctx.device.type == "cuda" else "lanczos"
        if self.feature_source != "pretrained":
            return ViewSources()
        store = FeatureStore.load_or_extract(
            ctx.data, ctx.cfg.dataset, ctx.cache_dir, self.backbone, self.backbone_weights,
            self.feature_size, ctx.device, download=self.download,
        )  # fmt: skip
        return ViewSources(pretrained_features=store)

    def choose(self, batch: Batch, view: BatchView):
        n, k = len(batch), self.keep_count(len(batch))
        if k >= n:
            return torch.arange(n), {}
        unit = normalize_rows(view.features(self.feature_source), dtype=torch.float64)
        solver = "eigh" if self.solver == "auto" else self.solver
        values, vectors = smallest_eigenpairs(unit, self.similarity, solver)
        fiedler = vectors[:, 1]
        keep = torch.topk(fiedler.abs(), k).indices
        diagnostics = {"lambda_min": values[0].item(), "lambda2": values[1].item()}
        if len(values) > 2:
            diagnostics["fiedler_gap"] = (values[2] - values[1]).item()
        self._warn_if_indefinite(values[0].item())
        return keep, diagnostics

    def _warn_if_indefinite(self, lambda_min: float) -> None:
        if lambda_min < -1e-8 and not self._warned_indefinite:
            self._warned_indefinite = True
            log.warning(
                "SALN: the Laplacian of signed cosine similarities is indefinite (lambda_min=%.3g). "
                "The paper's rule still takes the 2nd smallest eigenvalue; selector.similarity=clip "
                "or shift gives a proper graph Laplacian.", lambda_min,
            )  # fmt: skip
