"""What the selectors scored against a reference model share (RHO-LOSS, JEST): the
`selector.reference` options, the reference losses prepared once before training
(saln_exp/reference.py trains or loads the model), and a one-epoch reference in smoke runs."""

from __future__ import annotations

from typing import Any

from saln_exp.reference import ReferenceLosses
from saln_exp.selectors.base import RunContext, Selector, ViewSources


class WithReferenceModel(Selector):
    """Not a selector by itself (its `name` stays "base", so it is not registered)."""

    def __init__(self, reference: dict | None = None, **common: Any):
        super().__init__(**common)
        self.reference_options = dict(reference or {})

    def prepare(self, ctx: RunContext) -> ViewSources:
        return ViewSources(reference_losses=ReferenceLosses.prepare(ctx, self.reference_options))

    @classmethod
    def shrink_for_smoke(cls, options: Any) -> None:
        super().shrink_for_smoke(options)
        if "reference" in options:
            options.reference.epochs = 1
