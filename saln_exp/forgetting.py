"""Forgetting events (Toneva et al. 2019), counted from the training batches' own predictions.

A forgetting event is a sample going from correctly to incorrectly classified between two
consecutive presentations. Samples learned once and never forgotten are "unforgettable".
"""

from __future__ import annotations

import torch
from torch import Tensor

UNSEEN = -1


class ForgettingTracker:
    def __init__(self, size: int, device: torch.device | str = "cpu"):
        self.last = torch.full(
            (size,), UNSEEN, dtype=torch.int8, device=device
        )  # -1 unseen, 0/1 correct
        self.events = torch.zeros(size, dtype=torch.int32, device=device)
        self.learned = torch.zeros(size, dtype=torch.bool, device=device)
        self.presented = torch.zeros(size, dtype=torch.int32, device=device)

    def update(self, index: Tensor, correct: Tensor) -> Tensor:
        """Record one presentation per index; returns the number of forgetting events it caused
        (a 0-d tensor on the tracker's device: no host synchronisation per training step)."""
        now = correct.to(torch.int8)
        forgotten = (self.last[index] == 1) & (now == 0)
        self.events.index_add_(0, index, forgotten.to(torch.int32))
        self.learned[index] |= now.bool()
        self.presented.index_add_(0, index, torch.ones_like(index, dtype=torch.int32))
        self.last[index] = now
        return forgotten.sum()

    def summary(self, indices: Tensor) -> dict[str, float]:
        """Numbers over the given (training) indices."""
        events, learned, seen = (
            self.events[indices],
            self.learned[indices],
            self.presented[indices] > 0,
        )
        n = max(int(seen.sum()), 1)
        return {
            "forget/events_total": int(events.sum()),
            "forget/events_mean": float(events[seen].float().mean()) if seen.any() else 0.0,
            "forget/unforgettable_frac": float(((events == 0) & learned & seen).sum()) / n,
            "forget/never_learned_frac": float((~learned & seen).sum()) / n,
        }

    def state_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, k).cpu() for k in ("last", "events", "learned", "presented")}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k, v in state.items():
            setattr(self, k, v.to(getattr(self, k).device))
