"""EL2N pruning (Paul et al. 2021, "Deep Learning on a Data Diet").

EL2N(x, y) = E_w || softmax(f_w(x)) - onehot(y) ||_2, the expected L2 norm of the error vector,
taken a few epochs into training and averaged over independent initialisations. Low scores are
easy samples the rest of the data already teaches; the paper drops those (`drop: easy`), while
`drop: hard` removes the highest scores (likely label errors under heavy noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saln_exp.data.base import DataBundle, Split
from saln_exp.metrics import per_sample_outputs
from saln_exp.prune.common import (
    PruneJob,
    PruneResult,
    average_over_inits,
    check_scored_fraction,
    drop_by_score,
    register_method,
)


def el2n_scores(model: nn.Module, split: Split, data: DataBundle, batch_size: int) -> Tensor:
    """Per sample of `split`: || softmax(logits) - onehot(label) ||_2 in eval mode, no augmentation."""
    _, _, logits = per_sample_outputs(model, split, data.pipeline, batch_size)
    error = F.softmax(logits, dim=1) - F.one_hot(split.targets, logits.shape[1]).float()
    return torch.linalg.vector_norm(error, dim=1)


@register_method("el2n", check_scored_fraction, min_epochs=0)
def prune(job: PruneJob, data: DataBundle, device: torch.device) -> PruneResult:
    mean, per_repeat = average_over_inits(job, data, device, el2n_scores, "el2n")
    keep = drop_by_score(mean, float(job.options["fraction"]), str(job.options["drop"]))
    return PruneResult(keep, mean, {"score_per_repeat": per_repeat.T.astype("float32")})
