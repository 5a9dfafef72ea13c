"""Named random streams: every random draw outside the learner's own stream comes from here.

The learner's stream is torch's global generator, seeded by `seed` (train.seed_everything); it
draws the model's initialisation and nothing else may touch it. Every other consumer (the epoch
order, a selector's draws, a reference model, a pruner, the label noise) has a named stream: a
seed derived from the run's seed (or `dataset.split_seed` for what must stay fixed across run
seeds) plus the stream's own offset. Two consumers never share a stream, and adding a consumer
cannot shift another's numbers. The offsets are the values these streams have always used:
changing one changes every number that stream draws.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

STREAM_OFFSETS = {
    # from the run seed
    "epoch_order": 1,  # the trainer's permutation of the training split, epoch after epoch
    "reference_order": 31,  # a reference model's batch order
    "reference_fit": 97,  # global draws while a reference model trains (inside `isolated`)
    "selector": 104_729,  # a selector's own draws (uniform subsets, fallbacks, sampling)
    "prune/confident_learning": 1009,  # + fold: out-of-sample models
    "prune/el2n": 2003,  # + repeat: the scoring models
    "prune/grand": 2003,  # the same models as el2n: the two scores differ, the training does not
    "prune/forgetting": 3001,
    # from dataset.split_seed (fixed across run seeds)
    "train_eval_subset": 17,  # the train-split subset evaluated every epoch (eval.train_subset)
    "label_noise": 7919,  # which labels are corrupted
    "synthetic_images": 0,  # the synthetic dataset's prototypes and noise
    "test_split": 211,  # the test split carved from an image folder without test/ (imagefolder)
}


def add_stream(stream: str, offset: int) -> None:
    """The named stream of a module that registers itself (a pruning method's scoring models):
    its offset is fixed once, and two modules cannot claim one name with different offsets."""
    if STREAM_OFFSETS.setdefault(stream, int(offset)) != int(offset):
        raise ValueError(
            f"random stream {stream!r} has offset {STREAM_OFFSETS[stream]}, not {offset}"
        )


def stream_seed(seed: int, stream: str) -> int:
    """The seed of a named stream; an unknown name is a programming error, never a silent 0."""
    if stream not in STREAM_OFFSETS:
        raise KeyError(f"no random stream {stream!r}: add it to STREAM_OFFSETS in saln_exp/rng.py")
    return int(seed) + STREAM_OFFSETS[stream]


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for a named stream (torch.randperm / multinomial take it explicitly)."""
    return torch.Generator().manual_seed(stream_seed(seed, stream))


@contextmanager
def preserved(device: torch.device | None = None) -> Iterator[None]:
    """Whatever runs inside leaves torch's (CPU and the device's CUDA), numpy's and python's
    global random streams where they were. Reading data runs inside: a DataLoader draws its
    workers' base seed from torch's global generator, so a first, decoding run would otherwise
    initialise the model differently from a later run that reads the decode cache."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextmanager
def isolated(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch (CPU and the device's CUDA stream), numpy and python's random inside; restore all
    of them outside, so whatever runs inside (a side model's initialisation) leaves the learner's
    streams exactly where they were."""
    with preserved(device):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
