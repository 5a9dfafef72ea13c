"""SALN (Sharifi, Algorithm 1): keep the samples with the largest |Fiedler vector| entries of the
batch's similarity-graph Laplacian.

The rule is the paper's: S = cosine similarity of the feature rows (S_ii = 1), D = diag(S.sum(1)),
L = D - S, v = eigenvector of the second smallest eigenvalue, keep the k largest |v_i|. Only the
way v is computed differs (`saln_exp.spectral`): `solver=lanczos` (the default on CPU) computes
it matrix-free and only as far as the kept set needs, `eigh` (the default on GPUs) by torch's full
dense decomposition. The third eigenvalue gives the Fiedler gap, logged so a degenerate
(ambiguous) Fiedler vector is visible. Signed cosine similarities can make L indefinite;
`similarity=clip` (negative similarities set to 0) or `shift` ((S + 1) / 2) give a proper graph
Laplacian instead.
"""

from __future__ import annotations

import logging

import torch

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
from saln_exp.spectral import normalize_rows, smallest_eigenpairs

log = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "clip", "shift")
SOLVERS = ("auto", "lanczos", "eigh")


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
            options["backbone_weights"] = None  # what is smoke-tested, on the stand-in's 32x32
            options["feature_size"] = None

    def prepare(self, ctx: RunContext) -> ViewSources:
        if self.solver == "auto":
            self.solver = "eigh" if ctx.device.type == "cuda" else "lanczos"
        if self.feature_source != "pretrained":
            return ViewSources()
        store = FeatureStore.load_or_extract(
            ctx.data, ctx.dataset, ctx.cache_dir, self.backbone, self.backbone_weights,
            self.feature_size, ctx.device, download=self.download,
        )  # fmt: skip
        return ViewSources(pretrained_features=store)

    def choose(self, batch: Batch, view: BatchView):
        n, k = len(batch), self.keep_count(len(batch))
        if k >= n:
            return torch.arange(n), {}
        unit = normalize_rows(view.features(self.feature_source), dtype=torch.float64)
        solver = "eigh" if self.solver == "auto" else self.solver
        values, vectors = smallest_eigenpairs(unit, self.similarity, solver, keep=k)
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
