"""InfoBatch (Qin et al., ICLR 2024): which epochs prune, as its authors' sampler counts them.

Transcribed from `infobatch/infobatch.py::IBSampler` of github.com/NUS-HPC-AI-Lab/InfoBatch at
commit 8bbb012c256c9eb4de3bb209f8a5e73899de8d02: `stop_prune = num_epochs * delta`; `iterations`
starts at 0; `reset()` prunes unless `iterations > stop_prune`, then adds 1. The constructor calls
`reset()` once, and every epoch's `iter(sampler)` (`__iter__`) calls it again.
"""

from __future__ import annotations


class IBSampler:
    def __init__(self, num_epochs, delta):
        self.stop_prune = num_epochs * delta
        self.iterations = 0
        self.pruned = []  # one flag per reset() call
        self.reset()

    def reset(self):
        if self.iterations > self.stop_prune:
            self.pruned.append(False)  # no_prune(); weights reset at stop_prune + 1
        else:
            self.pruned.append(True)  # prune()
        self.iterations += 1

    def __iter__(self):
        self.reset()
        return self

    def __next__(self):  # the epoch's indices; only the schedule matters here
        raise StopIteration


def pruning_epochs(num_epochs, delta):
    """For each training epoch (0-based), whether the code prunes it."""
    sampler = IBSampler(num_epochs, delta)
    for _ in range(num_epochs):
        iter(sampler)  # a DataLoader's epoch
    return sampler.pruned[1:]  # the constructor's own reset() trains no epoch
