"""SALN (Sharifi, Algorithm 1): keep the samples with the largest |Fiedler vector| entries of the
batch's similarity-graph Laplacian.

The rule is the paper's: S = cosine similarity of the feature rows (S_ii = 1), D = diag(S.sum(1)),
L = D - S, v = eigenvector of the second smallest eigenvalue, keep the k largest |v_i|.
Only the way it is computed differs, because only three eigenpairs are ever needed:
- `lanczos` (default on CPU): scipy's ARPACK Lanczos for the 3 smallest eigenpairs on a
  matrix-free operator. With row-normalised features F, L v = D v - F (F^T v) and
  D = diag(F (F^T 1)), so each iteration costs O(n d) and S is never formed. Plain power
  iteration is not used: it converges to the wrong end of the spectrum without a shift and
  too slowly with one, and does not reproduce Algorithm 1's selections.
- `eigh`: the full dense eigendecomposition (float64), the default on GPUs where it is fast.
The third eigenvalue gives the Fiedler gap, logged so a degenerate (ambiguous) Fiedler vector
is visible. Signed cosine similarities can make L indefinite; `similarity=clip` (negative
similarities set to 0) or `shift` ((S + 1) / 2) give a proper graph Laplacian instead.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor

from saln_exp.errors import ConfigError
from saln_exp.features import FeatureStore
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
DENSE_BELOW = 64  # tiny batches: a dense solve is faster than setting up Lanczos


def normalize_rows(features: Tensor) -> Tensor:
    """Unit rows; an all-zero row stays zero (similarity 0 to everything, like sklearn's)."""
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
    """The k smallest eigenvalues (ascending) and eigenvectors (columns) of the batch Laplacian."""
    n = unit.shape[0]
    k = min(k, n)
    # A zero feature row is an isolated vertex: its unit vector is an exact null vector, so 0 is
    # a repeated eigenvalue, which a Krylov method cannot resolve (it finds one vector per
    # eigenvalue). The dense solver returns a proper basis; lambda2 = 0 then shows the graph is
    # disconnected and the Fiedler vector ambiguous.
    has_zero_row = bool((unit.abs().sum(dim=1) == 0).any())
    if solver == "eigh" or n < DENSE_BELOW or n <= k + 1 or has_zero_row:
        values, vectors = torch.linalg.eigh(dense_laplacian(unit.double(), similarity))
        return values[:k], vectors[:, :k]
    try:
        return _lanczos(unit, similarity, k)
    except ArpackNoConvergence:
        log.warning("SALN: Lanczos did not converge on a batch of %d; using the dense solver", n)
        values, vectors = torch.linalg.eigh(dense_laplacian(unit.double(), similarity))
        return values[:k], vectors[:, :k]


def _lanczos(unit: Tensor, similarity: str, k: int) -> tuple[Tensor, Tensor]:
    f = unit.detach().double().cpu().numpy()
    n = f.shape[0]
    if similarity == "clip":  # max(S, 0) has no low-rank form: build S once
        s = np.maximum(f @ f.T, 0.0)
        degree = s.sum(axis=1)
        matvec = lambda v: degree * v - s @ v  # noqa: E731
    elif similarity == "shift":  # (S + 11^T) / 2 stays matrix-free
        degree = (f @ f.sum(axis=0) + n) / 2.0
        matvec = lambda v: degree * v - (f @ (f.T @ v) + v.sum()) / 2.0  # noqa: E731
    else:
        degree = f @ f.sum(axis=0)
        matvec = lambda v: degree * v - f @ (f.T @ v)  # noqa: E731
    operator = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    # fixed start vector: ARPACK's default is random, which would make selections irreproducible;
    # not the all-ones vector, which is an exact eigenvector of L and would stall the Krylov space
    v0 = np.random.default_rng(0).standard_normal(n)
    values, vectors = eigsh(operator, k=k, which="SA", v0=v0, tol=0.0, maxiter=20 * n)
    order = np.argsort(values)
    return torch.from_numpy(values[order]), torch.from_numpy(vectors[:, order])


class SALN(Selector):
    name = "saln"

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
        self.feature_source = features
        self.similarity = similarity
        self.solver = solver
        self.backbone = backbone
        self.backbone_weights = backbone_weights
        self.feature_size = feature_size
        self.download = download
        self._warned_indefinite = False

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
        unit = normalize_rows(view.features(self.feature_source).double())
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
