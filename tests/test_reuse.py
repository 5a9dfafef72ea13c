"""Work done once instead of twice must give the very same numbers: the normalised copy of a
split, and the training split's outputs shared by evaluation and epochwise filtering."""

from __future__ import annotations

import torch
from torch import nn

from saln_exp.data.base import BatchPipeline, Split
from saln_exp.metrics import SplitOutputs, per_sample_outputs


def mnist_like_split(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    return Split(images, torch.randint(0, 10, (n,), generator=g), torch.arange(n))


def test_batches_from_the_normalised_copy_are_bitwise_the_pipelines_own():
    split = mnist_like_split()
    pipeline = BatchPipeline((0.1307,), (0.3081,), augment=None)
    positions = torch.randperm(len(split), generator=torch.Generator().manual_seed(1))[:77]
    expected = pipeline(split.images[positions], train=True)
    with torch.inference_mode():  # first use inside evaluation must not poison training
        _ = pipeline.batch(split, slice(0, 10), train=False)
    got = pipeline.batch(split, positions, train=True)
    assert split.normalised is not None and torch.equal(got, expected)
    assert not got.is_inference()
    weight = torch.ones(1, requires_grad=True)
    (got * weight).sum().backward()  # can be saved for backward
    assert weight.grad is not None


def test_the_copy_made_in_chunks_equals_the_whole_split_at_once(monkeypatch):
    """The copy is filled a few MiB at a time (a whole split at once held three float
    temporaries of its size); chunk edges, a ragged last chunk included, change no value."""
    from saln_exp.data import base

    split = mnist_like_split(n=301)
    pipeline = BatchPipeline((0.1307,), (0.3081,), augment=None)
    monkeypatch.setattr(base, "NORMALISED_CHUNK_BYTES", 4 * 12 * 12 * 50)  # 50 images a chunk
    got = pipeline.batch(split, torch.arange(301), train=False)
    assert torch.equal(got, pipeline(split.images, train=False))
    assert got.shape == (301, 1, 12, 12)


def test_augmented_training_batches_never_come_from_the_copy():
    split = mnist_like_split()
    flips = []

    class CountingAugment(nn.Module):
        def forward(self, x):
            flips.append(len(x))
            return x.flip(-1)

    pipeline = BatchPipeline((0.5,), (0.5,), augment=CountingAugment())
    out = pipeline.batch(split, slice(0, 20), train=True)
    assert flips == [20]
    assert torch.equal(out, pipeline(split.images[:20], train=False).flip(-1))


def test_split_outputs_are_reused_until_the_model_changes():
    split = mnist_like_split()
    pipeline = BatchPipeline((0.1307,), (0.3081,), augment=None)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    cache = SplitOutputs()
    first = cache.get(model, split, pipeline, 64)
    assert cache.get(model, split, pipeline, 64) is first  # no change: reused
    fresh = per_sample_outputs(model, split, pipeline, 64)
    assert all(torch.equal(a, b) for a, b in zip(first, fresh, strict=True))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(
        model(pipeline.batch(split, slice(0, 32), True)), split.targets[:32]
    )
    loss.backward()
    optimizer.step()  # one step: the outputs must be computed again
    after = cache.get(model, split, pipeline, 64)
    assert after is not first and not torch.equal(after[2], first[2])
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    assert cache.get(model, split, pipeline, 64) is not after  # a load counts as a change
