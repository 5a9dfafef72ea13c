"""What the selectors scored against a reference model share (RHO-LOSS, JEST): the
`selector.reference` options, the reference losses prepared once before training
(saln_exp/reference.py trains or loads the model), and a one-epoch reference in smoke runs."""

from __future__ import annotations

from typing import Any

from saln_exp.reference import ReferenceLosses
from saln_exp.selectors.base import RunContext, Selector, ViewSources


class WithReferenceModel(Selector):
    """Not a selector by itself (its `name` stays "base", so it is not registered).

    `reference` is the recipe of the reference model that `prepare` trains or loads (the
    `selector.reference` keys); None where the reference losses come from elsewhere (a model
    or lookup given to `selection.make`), so there is nothing to prepare."""

    def __init__(self, reference: dict | None = None, **common: Any):
        super().__init__(**common)
        self.reference_options = None if reference is None else dict(reference)

    def prepare(self, ctx: RunContext) -> ViewSources:
        if self.reference_options is None:
            return ViewSources()
        return ViewSources(reference_losses=ReferenceLosses.prepare(ctx, self.reference_options))

    @classmethod
    def shrink_for_smoke(cls, options: dict[str, Any]) -> None:
        super().shrink_for_smoke(options)
        if options.get("reference"):
            options["reference"]["epochs"] = 1
