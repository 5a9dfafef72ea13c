"""Run by tests/test_selection_api.py under torchrun (2 gloo ranks): what the selection API
refuses and what scope="local" gives each rank."""

import torch
import torch.distributed as dist
from torch import nn

from saln_exp import selection

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
x, y, index = torch.randn(10, 1, 4, 4), torch.randint(0, 3, (10,)), torch.arange(10)

try:  # ranks passing different candidate batches are refused on every rank, not mixed
    selection.make("topk_loss").select(model, x, y, index + rank)
    raise SystemExit("different batches were accepted")
except ValueError as err:
    assert "same candidate batch" in str(err)

kept = selection.make("topk_loss", filter_ratio=0.5, scope="local").select(model, x, y, index)
share = range(5 * rank, 5 * rank + 5)  # this rank's contiguous half of the batch
assert all(int(p) in share for p in kept.positions) and len(kept) == 2, kept.positions
assert kept.step_size == 4 and torch.equal(kept.x, x[kept.positions])

try:  # staging needs every rank to step together
    selection.make("accuracy", scope="local").select(model, x, y, index)
    raise SystemExit("scope=local with staging was accepted")
except ValueError as err:
    assert "scope='global'" in str(err)

kept = selection.make("topk_loss", filter_ratio=0.3).select(model, x, y, index)  # global: 7 kept
assert kept.step_size == 7 and len(kept) == (4 if rank == 0 else 3)  # the step's even shares
assert torch.equal(kept.x, x[kept.positions])
# DDP averages the ranks' means: weights W k_r / K make that the mean over the whole step
assert torch.allclose(kept.weights, torch.full((len(kept),), 2 * len(kept) / 7))
print(f"rank {rank} ok", flush=True)  # one line per rank; the test matches it anywhere
dist.destroy_process_group()
