"""DivBS, diversified batch selection (Hong et al., "Diversified Batch Selection for Training
Acceleration", ICML 2024), as its authors' code does it: `methods/DivBS.py` (`calc_grad`,
`greedy_selection`, `before_batch`) of github.com/Feng-Hong/DivBS at commit
33ae1062ad558be0821df72cf7b11aea231f4857.

Each sample of the candidate batch is represented by its last-layer gradient,
g_i = (softmax(z_i) - onehot(y_i)) outer h_i (h the penultimate features, eval mode), flattened;
the target is the batch's mean gradient. k = int(n * (1 - filter_ratio)) samples are chosen
greedily, reference-model free: at every step one sample is drawn with probability proportional to
|<g_i, r>|, r the residual of the mean gradient; its gradient, orthogonalised against the ones
already chosen (Gram-Schmidt) and normalised, is removed from the residual. So each choice
covers a direction of the mean gradient the others do not (the paper's orthogonalised
representativeness). When every correlation is zero (the chosen set already spans the residual),
the rest is drawn uniformly from the samples not chosen, as the authors' code does.

The code keeps `int(n * ratio)`, given the kept ratio itself (0.1 in its configs); here that ratio
is 1 - `filter_ratio` taken as the decimal it stands for, so f = 0.9 keeps 32 of 320 as the code
does, not the 31 that float arithmetic's 1 - 0.9 = 0.0999... would give.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saln_exp.selectors.base import Batch, BatchView, Selector


def last_layer_gradients(logits: Tensor, labels: Tensor, features: Tensor) -> Tensor:
    """Per-sample gradient of the cross-entropy with respect to the classifier's weights (n x C*d).
    The authors' code scales by 1/n (the batch-mean loss); the scale does not change a choice."""
    delta = logits.float().softmax(1) - F.one_hot(labels, logits.shape[1]).float()
    return (delta.unsqueeze(2) * features.float().unsqueeze(1)).flatten(1)


class DivBS(Selector):
    name = "divbs"
    style = ("#997700", "3")  # colour and marker in every figure (report/style.py)

    def keep_count(self, n: int) -> int:
        """The code's `int(inputs.shape[0] * ratio)`, at least 1."""
        return max(1, int(n * self.kept_ratio()))

    def greedy(self, grads: Tensor, k: int) -> Tensor:
        n = len(grads)
        residual = grads.mean(0)
        basis: list[Tensor] = []
        chosen: list[int] = []
        for _ in range(k):
            correlations = (grads @ residual).abs()
            correlations[chosen] = 0.0  # in the span already (zero up to rounding)
            if not torch.isfinite(correlations).all() or correlations.sum() <= 0:
                break
            i = int(torch.multinomial(correlations.cpu(), 1, generator=self.generator))
            direction = grads[i].clone()
            for u in basis:
                direction -= (u @ direction) * u
            norm = direction.norm()
            if norm <= 1e-12:
                break
            direction /= norm
            basis.append(direction)
            chosen.append(i)
            residual = residual - (direction @ residual) * direction
        if len(chosen) < k:  # nothing left to correlate with: the rest uniformly, as the code does
            rest = torch.tensor([j for j in range(n) if j not in set(chosen)], dtype=torch.long)
            chosen += rest[
                torch.randperm(len(rest), generator=self.generator)[: k - len(chosen)]
            ].tolist()
        return torch.tensor(chosen, dtype=torch.long)

    def choose(self, batch: Batch, view: BatchView):
        grads = last_layer_gradients(view.logits, batch.y, view.features("learner"))
        return self.greedy(grads.cpu(), self.keep_count(len(batch))), {}
