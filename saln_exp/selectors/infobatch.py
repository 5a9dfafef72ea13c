"""InfoBatch (Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data
Pruning", ICLR 2024), as its authors' `infobatch/infobatch.py` (github.com/NUS-HPC-AI-Lab/InfoBatch
at commit 8bbb012c256c9eb4de3bb209f8a5e73899de8d02) implements it.

Each sample's score is its most recent training loss (the per-sample loss of the step that trained
on it: no extra forward), 3.0 before it was first trained on. At the start of every epoch e
(0-based) with `e + 1 <= delta * epochs`, the first delta * epochs epochs as the paper says: the
code prunes while `iterations <= stop_prune`, and its `IBSampler` counter is already 1 when the
first epoch starts (the constructor calls `reset()` once, then every epoch's `__iter__` does):

- the "well-learned" samples are those whose score is below the mean score (Sec. 3.1);
- of them, `int(keep_ratio * count)` are kept, drawn uniformly without replacement, and the rest
  are pruned from the epoch; keep_ratio = 1 - r, r = `filter_ratio` (the pruning probability),
  clipped to [0.1, 1] as the code does;
- the kept well-learned samples' losses are scaled by 1 / keep_ratio (Sec. 3.2, Eq. 3), so the
  expected gradient over the epoch is that of the full set; every other sample weighs 1.

In the last epochs (annealing, Sec. 3.3) the whole training set is used with weight 1. The
training loss is the mean of weight * loss over each batch, as the code's `values.mul_(weights);
values.mean()`. Pruning is epoch-level (`epoch_positions`); every candidate batch is trained on
whole. `select/epoch_kept_frac` logs the fraction of the training set the epoch keeps, so the
saved back-propagation is 1 minus its mean (also visible in `samples/backprop`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saln_exp.errors import ConfigError
from saln_exp.selectors.base import Batch, BatchView, RunContext, Selector

INITIAL_SCORE = 3.0  # the code's `torch.ones(len(dataset)) * 3`: nothing counts as well learned yet


class InfoBatch(Selector):
    name = "infobatch"
    style = ("#AA4499", "8")  # colour and marker in every figure (report/style.py)

    def __init__(self, delta: float = 0.875, **common):
        super().__init__(**common)
        if not 0.0 <= float(delta) <= 1.0:
            raise ConfigError(
                f"selector.delta must be in [0, 1] for selector=infobatch, got {delta}"
            )
        self.delta = float(delta)
        self.keep_ratio = min(1.0, max(0.1, 1.0 - self.filter_ratio))
        self.scores: Tensor | None = None  # by dataset index
        self.weights: Tensor | None = None  # by dataset index, for the current epoch
        self.epoch = 0  # epochs started so far
        self.epoch_kept_frac = 1.0

    wants_training_losses = True

    def observe_training_losses(self, index: Tensor, losses: Tensor) -> None:
        # scores live on the training device: no host round trip per step
        if self.scores.device != losses.device:  # a checkpoint is read back on the CPU
            self.scores, self.weights = (
                self.scores.to(losses.device),
                self.weights.to(losses.device),
            )
        self.scores[index] = losses.float()

    def epoch_positions(self, ctx: RunContext) -> Tensor:
        if ctx.epochs is None:
            raise ValueError(
                f"selector {self.name!r} anneals over the run's length: pass the number of "
                "epochs (sampler(..., epochs=) in your own loop)"
            )
        train = ctx.data.train
        n_rows = len(ctx.data.noisy)  # dataset-index space (train and validation rows)
        if self.scores is None:
            self.scores = torch.full((n_rows,), INITIAL_SCORE, device=ctx.device)
            self.weights = torch.ones(n_rows, device=ctx.device)
        self.weights.fill_(1.0)
        epochs = int(ctx.epochs)
        pruning = self.epoch + 1 <= self.delta * epochs  # the code's iterations <= stop_prune
        self.epoch += 1
        positions = torch.arange(len(train))
        if pruning:  # once per epoch: the scores come to the host for the draw
            positions, kept_well_learned = self.prune(self.scores.cpu()[train.indices.cpu()])
            self.weights[train.indices.cpu()[kept_well_learned].to(self.weights.device)] = (
                1.0 / self.keep_ratio
            )
        self.epoch_kept_frac = len(positions) / len(train)
        return positions

    def prune(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """(positions the epoch trains on, the kept well-learned positions among them)."""
        well_learned = scores < scores.mean()
        low = torch.nonzero(well_learned).flatten()
        keep = int(self.keep_ratio * len(low))
        kept_low = low[torch.randperm(len(low), generator=self.generator)[:keep]]
        positions = torch.cat([torch.nonzero(~well_learned).flatten(), kept_low])
        return torch.sort(positions).values, kept_low

    def choose(self, batch: Batch, view: BatchView):
        if self.weights is None:  # outside an epoch (no `epoch_positions` yet): nothing pruned
            return torch.arange(len(batch)), {"epoch_kept_frac": 1.0}
        weights = self.weights[batch.index.to(self.weights.device)].to(batch.y.device)
        return torch.arange(len(batch)), {"epoch_kept_frac": self.epoch_kept_frac}, weights

    def state_dict(self) -> dict:
        return {
            **super().state_dict(), "scores": self.scores, "weights": self.weights,
            "epoch": self.epoch, "epoch_kept_frac": self.epoch_kept_frac,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scores, self.weights = state["scores"], state["weights"]
        self.epoch, self.epoch_kept_frac = int(state["epoch"]), float(state["epoch_kept_frac"])
