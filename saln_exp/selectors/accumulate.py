"""Batch accumulation (ASSIST Algorithm 10): stable batch size from variable selections.

Kept samples (the augmented tensors themselves, so what was filtered is what is trained on)
pile up across candidate batches; once `batch_size` are ready the step trains on exactly that
many, and whatever else was kept is discarded and counted as overflow.
"""

from __future__ import annotations

import torch

from saln_exp.selectors.base import Batch


class Accumulator:
    def __init__(self, batch_size: int):
        self.batch_size = int(batch_size)
        self.pending: list[Batch] = []
        self.count = 0
        self.overflow = 0  # kept samples discarded because the batch was already full

    def add(self, batch: Batch) -> Batch | None:
        """Add kept samples; return a full batch when one is ready, else None."""
        if len(batch) == 0:
            return None
        self.pending.append(batch)
        self.count += len(batch)
        if self.count < self.batch_size:
            return None
        k = self.batch_size
        weighted = any(b.w is not None for b in self.pending)  # weights travel with their samples
        full = Batch(
            torch.cat([b.index for b in self.pending])[:k],
            torch.cat([b.x for b in self.pending])[:k],
            torch.cat([b.y for b in self.pending])[:k],
            torch.cat([b.w if b.w is not None else torch.ones(len(b), device=b.y.device)
                       for b in self.pending])[:k] if weighted else None,
        )  # fmt: skip
        self.overflow += self.count - self.batch_size
        self.pending, self.count = [], 0
        return full

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
