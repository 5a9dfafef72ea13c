"""The paper artifacts a run writes beside its metrics, for the figures that need more than numbers:
one candidate batch with what the selector kept (SALN Fig. 7-8), the classifier's final weights
(SALN Fig. 9-10), and per-sample forgetting counts (Toneva et al.).

File names come from rundir.py; the readers are images.py, tracking.py and report/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from saln_exp.data.base import DataBundle
from saln_exp.forgetting import ForgettingTracker
from saln_exp.rundir import FINAL_LAYER, FORGETTING, SELECTION_EXAMPLE, save_npz, save_torch
from saln_exp.selectors import Batch, Selection


def save_selection_example(
    run_dir: Path,
    data: DataBundle,
    batch: Batch,
    selection: Selection,
    selector_name: str,
    batch_number: int,
    limit: int = 64,
) -> None:
    """The images of one candidate batch as the selector saw them (un-normalised to uint8), and
    which it kept."""
    pipe = data.pipeline
    images = (batch.x[:limit].float() * pipe.std + pipe.mean).clamp(0, 1)
    kept = torch.zeros(len(batch), dtype=torch.bool, device=batch.y.device)
    kept[selection.positions] = True
    save_torch(
        Path(run_dir) / SELECTION_EXAMPLE,
        {
            "images": (images * 255).round().to(torch.uint8).cpu(),
            "labels": batch.y[:limit].cpu(),
            "index": batch.index[:limit].cpu(),
            "kept": kept[:limit].cpu(),
            "selector": selector_name,
            "batch": batch_number,
        },
    )


def save_final_layer(run_dir: Path, model: nn.Module) -> None:
    head = model.classifier
    save_npz(
        Path(run_dir) / FINAL_LAYER,
        weight=head.weight.detach().float().cpu().numpy(),
        bias=head.bias.detach().float().cpu().numpy() if head.bias is not None else np.zeros(0),
    )


def save_forgetting(run_dir: Path, data: DataBundle, forgetting: ForgettingTracker) -> None:
    """Counts of the training split's samples, in its order (the tracker is keyed by source-train
    index, which pruning or a validation split make differ from positions)."""
    index = data.train.indices.cpu()
    save_npz(
        Path(run_dir) / FORGETTING,
        index=index.numpy(),
        events=forgetting.events.cpu()[index].numpy(),
        learned=forgetting.learned.cpu()[index].numpy(),
        presented=forgetting.presented.cpu()[index].numpy(),
        noisy=data.noisy.cpu()[index].numpy(),
    )
