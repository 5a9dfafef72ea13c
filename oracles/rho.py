"""RHO-LOSS (Mindermann et al. 2022): the oracle for the rho selector."""

from __future__ import annotations

import numpy as np


def rho_loss(learner_losses, reference_losses, k):
    """RHO-LOSS: top-k of the reducible loss."""
    reducible = learner_losses - reference_losses
    return sorted(np.argsort(-reducible, kind="stable")[:k].tolist())
