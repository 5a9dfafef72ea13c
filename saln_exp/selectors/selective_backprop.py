"""Selective-Backprop (Jiang et al., "Accelerating Deep Learning by Focusing on the Biggest
Losers", 2019), as its authors' code runs it: github.com/angelajiang/SelectiveBackprop at commit
7c419379c45a8d55e447dd81a57c1f37a39dcb27.

- Keep probabilities (`lib/calculators.py::BatchedRelativeProbabilityCalculator`,
  `lib/hist.py::UnboundedHistogram`): the candidate batch's losses all join a history of the last
  `history` losses (1024, `max_history_len`) first; then each sample's percentile is the share
  of the history strictly below its loss (`if i < score`), and it is kept with probability
  P = max(sampling_min, (percentile / 100) ** beta), a uniform draw below P
  (`lib/selectors.py::SamplingSelector`). `beta` sets the selectivity: on a stationary loss
  distribution about 1 / (1 + beta) of the samples are kept. The paper evaluates 1, 2 and 3;
  the default here is 1, the code's example script defaults to 3 (`examples/train.py
  --prob_pow`): `selector.beta=3` runs that.
- The first `prime_epochs` epochs train on everything (`lib/selectors.py::PrimedSelector` with
  `num_images_to_prime = num_training_images` in `lib/SelectiveBackpropper.py`: one epoch); the
  history is not fed meanwhile, as the code's baseline selector never calls the calculator.
  Epochs are counted by the `start_epoch` hook (the runner's epochs; in the selection API, those
  of `sel.sampler(...)`); where none has started, it selects from the first batch.
- Staging (`lib/trainer.py::Trainer.get_batch`): the YAML turns accumulation on, with this
  selector's `carry` rule (accumulate.py), so every selected sample is back-propagated, in
  steps of exactly `batch_size` but an epoch's last.

Losses come from the selector's eval-mode forward without gradients, as the code's
`CutoutForwardpropper` does. `filter_ratio` is not used (beta is the selectivity).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saln_exp.errors import ConfigError
from saln_exp.selectors.base import Batch, BatchView, Selector


class SelectiveBackprop(Selector):
    name = "selective_backprop"
    style = ("#661100", "1")  # colour and marker in every figure (report/style.py)

    def __init__(
        self,
        beta: float = 1.0,
        history: int = 1024,
        sampling_min: float = 0.0,
        prime_epochs: int = 1,
        **common,
    ):
        super().__init__(**common)
        if float(beta) <= 0:
            raise ConfigError(
                f"selector.beta must be > 0 for selector=selective_backprop, got {beta}"
            )
        if int(history) < 1:
            raise ConfigError(f"selector.history must be at least 1, got {history}")
        if not 0.0 <= float(sampling_min) <= 1.0:
            raise ConfigError(f"selector.sampling_min must be in [0, 1], got {sampling_min}")
        if int(prime_epochs) < 0:
            raise ConfigError(f"selector.prime_epochs must be at least 0, got {prime_epochs}")
        self.beta, self.history, self.sampling_min = float(beta), int(history), float(sampling_min)
        self.prime_epochs = int(prime_epochs)
        self.losses = torch.empty(0)  # the last `history` losses, oldest first
        self.epochs_started = 0

    def probabilities(self, losses: Tensor) -> Tensor:
        """The batch joins the history, then each loss gets its keep probability."""
        losses = losses.float().cpu()
        self.losses = torch.cat([self.losses, losses])[-self.history :]
        below = (self.losses[None, :] < losses[:, None]).sum(1)  # strictly below, per loss
        percentile = below.double() * 100.0 / len(self.losses)
        return (percentile / 100.0).pow(self.beta).clamp_min(self.sampling_min).float()

    def start_epoch(self) -> None:
        self.epochs_started += 1  # for the priming

    def priming(self) -> bool:
        """Within the first `prime_epochs` epochs. Where no epoch has started (a loop that never
        says when epochs start) there is nothing to prime: it selects."""
        return 0 < self.epochs_started <= self.prime_epochs

    def choose(self, batch: Batch, view: BatchView):
        if self.priming():
            return torch.arange(len(batch)), {"keep_prob_mean": 1.0}
        p = self.probabilities(view.losses)
        kept = torch.nonzero(torch.rand(len(p), generator=self.generator) < p).flatten()
        return kept, {"keep_prob_mean": float(p.mean())}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "losses": self.losses, "epochs": self.epochs_started}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.losses = state["losses"]
        self.epochs_started = int(state.get("epochs", 0))
