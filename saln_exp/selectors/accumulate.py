"""Accumulation: a stable step size from selections of variable size.

Kept samples (the augmented tensors themselves, so what was judged is what is trained on) are
staged across candidate batches; every `batch_size` of them make one optimizer step. What happens
to the samples beyond a full batch is the selector's rule (`Selector.overflow_rule`):

- `carry` (Selective-Backprop, `lib/trainer.py::Trainer.get_batch` of
  github.com/angelajiang/SelectiveBackprop at 7c419379c45a8d55e447dd81a57c1f37a39dcb27; the
  default for every selector but ASSIST's accuracy filters): they wait for the next step, so no
  kept sample is lost. At an epoch's last candidate batch, if no full batch formed, whatever is
  staged is trained as one smaller step; if a full batch formed, the rest waits for the next
  epoch, as that code does. At the run's last candidate batch everything staged is trained
  (the authors' loop runs against a clock and never reaches an end of training).
- `discard` (ASSIST thesis Algorithm 10, section 3.3.2, for its accuracy filters): once a batch is
  full, the kept samples that did not fit are discarded and counted as overflow; batches span
  epochs and are never flushed early.
"""

from __future__ import annotations

import torch

from saln_exp.selectors.base import OVERFLOW_RULES, Batch


def concat(batches: list[Batch]) -> Batch:
    weighted = any(b.w is not None for b in batches)  # weights travel with their samples
    return Batch(
        torch.cat([b.index for b in batches]),
        torch.cat([b.x for b in batches]),
        torch.cat([b.y for b in batches]),
        torch.cat([b.w if b.w is not None else torch.ones(len(b), device=b.y.device)
                   for b in batches]) if weighted else None,
    )  # fmt: skip


class Accumulator:
    def __init__(self, batch_size: int, overflow_rule: str):
        if overflow_rule not in OVERFLOW_RULES:
            raise ValueError(
                f"overflow_rule must be one of {OVERFLOW_RULES}, got {overflow_rule!r}"
            )
        self.batch_size = int(batch_size)
        self.rule = overflow_rule
        self.pending: list[Batch] = []
        self.count = 0
        self.overflow = 0  # kept samples discarded because the batch was already full
        self.formed = False

    def add(self, batch: Batch) -> None:
        """Stage the kept samples of one candidate batch."""
        if len(batch):
            self.pending.append(batch)
            self.count += len(batch)
        self.formed = False  # no full batch taken from this candidate batch yet

    def ready(self, epoch_end: bool = False, run_end: bool = False) -> Batch | None:
        """The next batch to train on, or None: call until None after each `add`.
        `epoch_end` / `run_end`: that was the epoch's / the run's last candidate batch."""
        if self.count >= self.batch_size:
            full = self.take(self.batch_size)
            if self.rule == "discard":  # ASSIST: one step, whatever else was kept is dropped
                self.overflow += self.count
                self.pending, self.count = [], 0
            self.formed = True
            return full
        if self.rule == "carry" and self.count and (run_end or (epoch_end and not self.formed)):
            return self.take(self.count)
        return None

    def take(self, k: int) -> Batch:
        """The first k staged samples, first come first served; the rest stay staged."""
        staged = concat(self.pending)
        head = staged.take(torch.arange(k, device=staged.y.device))
        rest = staged.take(torch.arange(k, len(staged), device=staged.y.device))
        self.pending, self.count = ([rest] if len(rest) else []), len(rest)
        return head

    def state_dict(self) -> dict:
        return {
            "pending": [(b.index.cpu(), b.x.cpu(), b.y.cpu()) for b in self.pending],
            "weights": [None if b.w is None else b.w.cpu() for b in self.pending],
            "overflow": self.overflow,
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        weights = state.get("weights") or [None] * len(state["pending"])
        self.pending = [
            Batch(i.to(device), x.to(device), y.to(device), None if w is None else w.to(device))
            for (i, x, y), w in zip(state["pending"], weights, strict=True)
        ]
        self.count = sum(len(b) for b in self.pending)
        self.overflow = int(state["overflow"])
