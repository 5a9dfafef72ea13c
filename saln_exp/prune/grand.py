"""GraNd pruning (Paul et al. 2021, "Deep Learning on a Data Diet").

GraNd(x, y) = E_w || grad_w loss(f_w(x), y) ||_2, the expected norm of the per-sample gradient of
the cross-entropy with respect to the parameters, averaged over independent initialisations
(the paper scores at initialisation or early in training; `prune.epochs` picks when).
Per-sample gradients come from torch.func (vmap over grad of a functional call). With
`last_layer: true` only the classifier's weight and bias count: much cheaper on large models, and
then GraNd = ||p - y|| * sqrt(||h||^2 + 1) for penultimate features h, a rescaled EL2N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from saln_exp.data.base import DataBundle, Split
from saln_exp.prune.common import (
    PruneJob,
    PruneResult,
    average_over_inits,
    check_scored_fraction,
    drop_by_score,
    register_method,
)

CHUNK = 128  # samples per vmap call: bounds memory at CHUNK x number of parameters


def grand_scores(
    model: nn.Module, split: Split, data: DataBundle, batch_size: int, last_layer: bool = False
) -> Tensor:
    """Per sample of `split`: the L2 norm of d loss / d parameters, in eval mode, no augmentation."""
    was_training = model.training
    model.eval()
    head = {id(p) for p in model.classifier.parameters()}  # every model names its last layer so
    names = [n for n, p in model.named_parameters() if not last_layer or id(p) in head]
    params = {n: p.detach() for n, p in model.named_parameters()}
    wrt = {n: params.pop(n) for n in names}
    fixed = {**params, **{n: b.detach() for n, b in model.named_buffers()}}

    def loss(w: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, {**fixed, **w}, (x.unsqueeze(0),))
        return F.cross_entropy(logits.float(), y.unsqueeze(0))

    per_sample_grad = vmap(grad(loss), in_dims=(None, 0, 0))
    norms = []
    step = min(CHUNK, batch_size)
    chunks = [slice(start, start + step) for start in range(0, len(split), step)]
    for chunk, x in zip(chunks, data.pipeline.batches(split, chunks, train=False), strict=True):
        grads = per_sample_grad(wrt, x, split.targets[chunk])
        squared = sum(g.flatten(1).pow(2).sum(1) for g in grads.values())
        norms.append(squared.sqrt())
    model.train(was_training)
    return torch.cat(norms)


@register_method("grand", check_scored_fraction, min_epochs=0)
def prune(job: PruneJob, data: DataBundle, device: torch.device) -> PruneResult:
    last_layer = bool(job.options.get("last_layer", False))

    def score(model: nn.Module, split: Split, data: DataBundle, batch_size: int) -> Tensor:
        return grand_scores(model, split, data, batch_size, last_layer)

    mean, per_repeat = average_over_inits(job, data, device, score, "grand")
    keep = drop_by_score(mean, float(job.options["fraction"]), str(job.options["drop"]))
    return PruneResult(keep, mean, {"score_per_repeat": per_repeat.T.astype("float32")})
