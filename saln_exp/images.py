"""Images of one run, shared by the report's selection figure (report/figures.py) and the run's
own W&B upload (tracking.py): the example batch as a grid with kept and dropped samples framed,
and the classifier weights as a grey-scale picture. numpy only, no plotting library, so the runner
needs nothing from the report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from saln_exp import rundir
from saln_exp.safe_load import UNREADABLE, load_plain

log = logging.getLogger(__name__)

# Okabe and Ito's blue and orange: told apart with every kind of colour blindness and in grey
# scale (dark against light), unlike a green / red pair
KEPT_RGB, DROPPED_RGB = np.array([0, 114, 178]) / 255, np.array([230, 159, 0]) / 255


def montage(images: np.ndarray, kept: np.ndarray, border: int = 2) -> np.ndarray:
    """uint8 [n, C, H, W] -> one RGB grid; kept images framed blue, dropped ones orange and faded."""
    x = images.astype(np.float32) / 255.0
    x = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x[:, :3]
    x = x.transpose(0, 2, 3, 1)
    x[~kept] = 0.35 * x[~kept] + 0.65
    n, h, w, _ = x.shape
    tiles = np.broadcast_to(
        np.where(kept[:, None], KEPT_RGB, DROPPED_RGB)[:, None, None, :],
        (n, h + 2 * border, w + 2 * border, 3),
    ).copy()
    tiles[:, border : border + h, border : border + w] = x
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    tiles = np.concatenate([tiles, np.ones((rows * cols - n, *tiles.shape[1:]))])
    th, tw = tiles.shape[1:3]
    return (
        tiles.reshape(rows, cols, th, tw, 3)
        .transpose(0, 2, 1, 3, 4)
        .reshape(rows * th, cols * tw, 3)
    )


def load_example(run_dir: str | Path) -> dict | None:
    """The run's saved selection example, read as plain tensors only (a crafted file in a shared
    sweep directory must not run code on its reader); an unreadable one skips the figure."""
    path = Path(run_dir) / rundir.SELECTION_EXAMPLE
    if not path.exists():
        return None
    try:
        example = load_plain(path)
    except UNREADABLE as err:
        log.warning(
            "%s is unreadable (%s); its selection figure is skipped", path, type(err).__name__
        )
        return None
    if not _is_example(example):
        log.warning("%s is not a selection example; its selection figure is skipped", path)
        return None
    return example


def _is_example(example: object) -> bool:
    """What run_artifacts.save_selection_example writes: n uint8 images, n kept flags and labels."""
    import torch

    if not isinstance(example, dict):
        return False
    images, kept, labels = (example.get(k) for k in ("images", "kept", "labels"))
    if not all(isinstance(t, torch.Tensor) for t in (images, kept, labels)):
        return False
    n = len(images) if images.dim() == 4 else -1
    return (
        images.dtype == torch.uint8
        and kept.dtype == torch.bool
        and kept.shape == labels.shape == (n,)
        and isinstance(example.get("selector"), str)
        and isinstance(example.get("batch"), int)
    )


def load_final_layer(run_dir: str | Path) -> np.ndarray | None:
    """The classifier's weights [classes, features] from the run's final_layer.npz; None when the
    run has none, or (with a warning naming the file) when it holds something else."""
    path = Path(run_dir) / rundir.FINAL_LAYER
    if not path.exists():
        return None
    arrays = rundir.read_arrays(path, ("weight",))
    if arrays is not None and (arrays["weight"].ndim != 2 or arrays["weight"].size == 0):
        log.warning("%s skipped: its weight is not a matrix", path)
        return None
    return None if arrays is None else arrays["weight"]


def weights_image(weight: np.ndarray) -> np.ndarray:
    """Classifier weights [classes, features] as grey levels in [0, 1], 0.5 = zero, one scale for
    negative and positive weights (SALN Fig. 9-10 draw the same matrix as a heatmap)."""
    limit = float(np.abs(weight).max()) or 1.0
    return 0.5 + 0.5 * weight.astype(np.float32) / limit
