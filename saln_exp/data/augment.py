"""The papers' training augmentations, twice: batched on the device (what training uses) and
per sample with torchvision (what a plain DataLoader loop would use). Tests check that the two
agree in distribution; the benchmark races them.

Both take float images in [0, 1] before normalisation. Interpolation is nearest and p = 1 for the
geometric ops because those are torchvision's defaults (kornia's are bilinear and p = 0.5).
"""

from __future__ import annotations

import kornia.augmentation as K
from torch import nn
from torchvision.transforms import v2 as T


def assist_cifar_batched() -> nn.Module:
    """ASSIST section 4.2.3: flip, affine(180, translate .1, scale .9-1.1), crop 32 pad 4, jitter."""
    return nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=180, translate=(0.1, 0.1), scale=(0.9, 1.1), resample="nearest", p=1.0),
        K.RandomCrop((32, 32), padding=4, p=1.0),
        K.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.05, p=1.0),
    )


def assist_cifar_per_sample() -> T.Compose:
    return T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomAffine(degrees=180, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            T.RandomCrop(32, padding=4),
            T.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.05),
        ]
    )


def saln_pets_batched() -> nn.Module:
    """SALN section 3.1: flip, rotation 15, jitter (.2, .2, .2, .1); resizing happens at load."""
    return nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomRotation(15.0, resample="nearest", p=1.0),
        K.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1, p=1.0),
    )


def saln_pets_per_sample() -> T.Compose:
    return T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomRotation(15),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        ]
    )


def flip_crop_batched(size: int, flip: bool = True) -> nn.Module:
    """The common CIFAR-style recipe (He et al. 2016): a horizontal flip, then a random
    size x size crop of the image zero-padded by size / 8 (4 pixels at 32). `flip=False` for
    digits, which a mirror turns into other glyphs."""
    crop = K.RandomCrop((size, size), padding=max(1, size // 8), p=1.0)
    return nn.Sequential(K.RandomHorizontalFlip(p=0.5), crop) if flip else nn.Sequential(crop)
