"""The training augmentations: the batched kornia pipelines (what training uses) must match the
per-sample torchvision pipelines (the papers' reference code) in distribution, draw their random
parameters per sample, and keep images' shape, dtype and range.

Every comparison is seeded, so the tests are deterministic; the tolerances are nevertheless set
from the sampling error, so that they would pass for (almost) any seed when both paths share a
distribution, and they were checked to fail on a mis-configured pipeline (affine p=0.5, no crop
padding, padding 2, brightness or contrast halved, translate doubled, rotation 5 or 30 degrees,
flip p=0 or 1 for pets, hue in radians instead of turns, bilinear resampling).
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_hsv
from torch import nn
from torchvision.transforms import v2 as T

from saln_exp.data import BatchPipeline
from saln_exp.data.augment import (
    assist_cifar_batched,
    assist_cifar_per_sample,
    saln_pets_batched,
    saln_pets_per_sample,
)

# name, batched factory, per-sample factory, image side used here (pets is 224 in real runs; the
# transforms do not depend on the size, 64 keeps the test fast)
PIPELINES = [
    pytest.param(assist_cifar_batched, assist_cifar_per_sample, 32, id="cifar"),
    pytest.param(saln_pets_batched, saln_pets_per_sample, 64, id="pets"),
]
REPS, N_IMAGES = 100, 16  # 1 600 augmented samples per path
N = REPS * N_IMAGES


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run thousands of tiny tensor ops; with two intra-op threads on a busy 2-core
    machine every op waits on an OpenMP barrier (measured: the per-sample loop goes from ~1.3 s to
    15-40 s). One thread is as fast when idle and immune to that."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def structured_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Natural-ish images: smooth colour fields plus a bright off-centre rectangle, so geometry
    (rotation, translation, flips, padding) and colour both show in the statistics."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x[:, :, size // 8 : size // 3, size // 2 : size * 3 // 4] = 0.9
    return x.clamp(0.0, 1.0)


def run_batched(pipe: nn.Module, x: torch.Tensor, reps: int) -> torch.Tensor:
    return torch.cat([pipe(x) for _ in range(reps)])


def run_per_sample(pipe: T.Compose, x: torch.Tensor, reps: int) -> torch.Tensor:
    return torch.stack([pipe(img) for _ in range(reps) for img in x])


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = a.flatten().sort().values, b.flatten().sort().values
    grid = torch.cat([a, b])
    fa = torch.searchsorted(a, grid, right=True) / len(a)
    fb = torch.searchsorted(b, grid, right=True) / len(b)
    return (fa - fb).abs().max().item()


def ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    """KS critical value: c(alpha) * sqrt((n + m) / (n m)), c(alpha) = sqrt(-ln(alpha / 2) / 2)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def per_sample_stats(o: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scalar statistics of each augmented image."""
    stats = {f"brightness[{c}]": o[:, c].mean(dim=(1, 2)) for c in range(o.shape[1])}
    stats["contrast"] = o.mean(1).std(dim=(1, 2))
    stats["saturation"] = (o.amax(1) - o.amin(1)).mean(dim=(1, 2))
    stats["black_fraction"] = (o.amax(1) == 0).float().mean(dim=(1, 2))  # padding / corners
    stats["left_minus_right"] = o[..., : o.shape[-1] // 2].mean((1, 2, 3)) - o[
        ..., o.shape[-1] // 2 :
    ].mean((1, 2, 3))
    return stats


def component(pipe, kind):
    """The transform of type `kind` inside a batched (nn.Sequential) or per-sample (Compose) pipeline."""
    parts = pipe.transforms if isinstance(pipe, T.Compose) else list(pipe)
    found = [p for p in parts if isinstance(p, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {pipe}"
    return found[0]


def without(pipe, kind):
    """The same pipeline minus its transforms of type `kind` (e.g. geometry only)."""
    if isinstance(pipe, T.Compose):
        return T.Compose([p for p in pipe.transforms if not isinstance(p, kind)])
    return nn.Sequential(*[p for p in pipe if not isinstance(p, kind)])


@pytest.mark.parametrize(("batched", "per_sample", "size"), PIPELINES)
def test_batched_and_per_sample_agree_in_distribution(batched, per_sample, size):
    torch.manual_seed(0)
    x = structured_images(N_IMAGES, size)
    k = run_batched(batched(), x, REPS)
    t = run_per_sample(per_sample(), x, REPS)
    assert k.shape == t.shape == (N, 3, size, size)

    # 1. per-image scalar statistics: two-sample KS at alpha = 1e-3 (same balanced image set on
    # both sides, so the iid KS bound is if anything conservative). Same-path reruns give <= 0.045.
    crit = ks_critical(N, N)
    sk, st = per_sample_stats(k), per_sample_stats(t)
    distances = {name: ks_distance(sk[name], st[name]) for name in sk}
    assert max(distances.values()) < crit, (distances, crit)

    # 2. per-pixel mean and std maps: under equal distributions E|mean_k - mean_t| is
    # sqrt(2/pi) * sqrt(var_k/N + var_t/N) per pixel; allow 1.5x that on average over pixels.
    expected = (math.sqrt(2 / math.pi) * (k.var(0) / N + t.var(0) / N).sqrt()).mean().item()
    mean_gap = (k.mean(0) - t.mean(0)).abs().mean().item()
    assert mean_gap < 1.5 * expected, (mean_gap, expected)
    # the std of a sample std is about std / sqrt(2N); same bound shape for the std maps
    expected_std = (math.sqrt(2 / math.pi) * ((k.var(0) + t.var(0)) / (2 * N)).sqrt()).mean().item()
    std_gap = (k.std(0) - t.std(0)).abs().mean().item()
    assert std_gap < 2.0 * expected_std, (std_gap, expected_std)

    # 3. global per-channel brightness: means within 4 standard errors
    for c in range(3):
        bk, bt = sk[f"brightness[{c}]"], st[f"brightness[{c}]"]
        se = math.sqrt(bk.var().item() / N + bt.var().item() / N)
        assert abs(bk.mean().item() - bt.mean().item()) < 4 * se


@pytest.mark.parametrize(("batched", "per_sample", "size"), PIPELINES)
def test_colour_jitter_matches_torchvision(batched, per_sample, size):
    """On flat colours near mid-gray nothing clips, and every jitter step but hue keeps the hue, so
    the hue shift is the hue factor itself: uniform in [-hue, hue] turns in both paths (kornia's
    adjust_hue takes radians, the pipeline must convert)."""
    torch.manual_seed(1)
    jit_k, jit_t = component(batched(), K.ColorJitter), component(per_sample(), T.ColorJitter)
    hue = float(jit_t.hue[1])
    colours = 0.45 + 0.1 * torch.rand(N_IMAGES, 3, 1, 1)  # x 1.5^3 stays below 1
    x = colours.expand(N_IMAGES, 3, 8, 8).contiguous()

    def hue_shift(o):  # turns in [-0.5, 0.5)
        h_out = rgb_to_hsv(o)[:, 0, 0, 0] / (2 * math.pi)
        h_in = rgb_to_hsv(x)[:, 0, 0, 0].repeat(REPS) / (2 * math.pi)
        return (h_out - h_in + 0.5) % 1.0 - 0.5

    k = run_batched(jit_k, x, REPS)
    t = run_per_sample(T.Compose([jit_t]), x, REPS)
    hk, ht = hue_shift(k), hue_shift(t)
    for h in (hk, ht):
        assert h.abs().max() <= hue + 2e-3
        assert h.min() < -0.8 * hue and h.max() > 0.8 * hue
    crit = ks_critical(N, N)
    assert ks_distance(hk, ht) < crit
    for name, a in per_sample_stats(k).items():
        if name not in ("black_fraction", "left_minus_right"):
            assert ks_distance(a, per_sample_stats(t)[name]) < crit, name


@pytest.mark.parametrize(("batched", "per_sample", "size"), PIPELINES)
def test_flips_about_half_the_time(batched, per_sample, size):
    """n = 2 000 draws, p = 0.5: the flipped fraction has sd 0.011; 0.45..0.55 is 4.5 sd."""
    torch.manual_seed(2)
    x = torch.rand(1, 3, 8, 8)
    n = 2000
    flip_k = component(batched(), K.RandomHorizontalFlip)
    out = flip_k(x.expand(n, -1, -1, -1))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 0.45 < flipped.float().mean().item() < 0.55  # also proves per-sample draws in one batch

    flip_t = component(per_sample(), T.RandomHorizontalFlip)
    frac_t = sum(bool((flip_t(x[0]) == x[0].flip(-1)).all()) for _ in range(n)) / n
    assert 0.45 < frac_t < 0.55


def test_pets_pipeline_flips_whole_images():
    """End to end (rotation 15 and jitter do not move mass across the midline): a gray image whose
    bright block is on the left ends up brighter on the right about half the time."""
    torch.manual_seed(3)
    x = torch.full((1, 3, 64, 64), 0.2)
    x[..., 16:48, 4:24] = 0.8
    n = 1000
    out = saln_pets_batched()(x.expand(n, -1, -1, -1))
    right = out[..., 32:].mean((1, 2, 3)) > out[..., :32].mean((1, 2, 3))
    assert 0.43 < right.float().mean().item() < 0.57


def _shifts(out: torch.Tensor) -> torch.Tensor:
    """Crop offsets (dy, dx) per sample from images whose pixels encode their own position."""
    side = out.shape[-1]
    shifts = []
    for o in out[:, 0]:
        a, b = torch.nonzero(o > 0, as_tuple=True)
        code = (o[a, b] * (side * side + 1)).round().long() - 1
        dy, dx = code // side - a, code % side - b
        assert bool((dy == dy[0]).all() and (dx == dx[0]).all()), "crop is not a pure translation"
        shifts.append((dy[0].item(), dx[0].item()))
    return torch.tensor(shifts)


def test_crop_shifts_at_most_four_pixels():
    torch.manual_seed(4)
    side = 32
    codes = (torch.arange(side * side, dtype=torch.float32) + 1) / (side * side + 1)
    x = codes.view(1, 1, side, side).expand(1, 3, side, side).contiguous()
    n = 400
    crop_k = component(assist_cifar_batched(), K.RandomCrop)
    out_k = crop_k(x.expand(n, -1, -1, -1))
    assert out_k.shape == (n, 3, side, side)
    crop_t = component(assist_cifar_per_sample(), T.RandomCrop)
    out_t = torch.stack([crop_t(x[0]) for _ in range(n)])
    for shifts in (_shifts(out_k), _shifts(out_t)):
        assert (
            int(shifts.abs().max()) == 4
        )  # never more than the padding, and the full range is used
        assert int(shifts.min()) == -4
        assert len({tuple(s) for s in shifts.tolist()}) > 60  # of 81 possible; per-sample offsets
        assert abs(shifts.float().mean().item()) < 0.5  # centred: sd of a mean of 400 is ~0.13


@pytest.mark.parametrize(("batched", "per_sample", "size"), PIPELINES)
def test_geometry_uses_nearest_resampling(batched, per_sample, size):
    """torchvision's default (nearest, zero fill): geometric outputs only hold input values or 0."""
    torch.manual_seed(5)
    palette = torch.tensor([0.2, 0.4, 0.6, 0.8])
    blocks = palette[torch.randint(0, 4, (8, 3, 4, 4))]
    x = F.interpolate(blocks, size=(size, size), mode="nearest")
    allowed = torch.cat([palette, torch.zeros(1)])
    out_k = without(batched(), K.ColorJitter)(x)
    out_t = torch.stack([without(per_sample(), T.ColorJitter)(img) for img in x])
    for out in (out_k, out_t):
        assert bool(torch.isclose(out.unsqueeze(-1), allowed).any(-1).all())
        assert not torch.equal(out, x)


@pytest.mark.parametrize(("batched", "per_sample", "size"), PIPELINES)
def test_each_sample_gets_its_own_parameters(batched, per_sample, size):
    torch.manual_seed(6)
    x = structured_images(1, size).expand(64, -1, -1, -1).contiguous()
    out = batched()(x)
    distinct = {tuple(o.flatten()[::7].tolist()) for o in out}
    assert len(distinct) == 64
    # jitter alone: different brightness per sample, not one factor for the batch
    jit = component(batched(), K.ColorJitter)
    means = jit(x).mean(dim=(1, 2, 3))
    assert means.unique().numel() == 64


@pytest.mark.parametrize(("batched", "per_sample", "size"), PIPELINES)
def test_output_shape_dtype_range(batched, per_sample, size):
    torch.manual_seed(7)
    x = structured_images(8, size)
    before = x.clone()
    for out in (batched()(x), torch.stack([per_sample()(img) for img in x])):
        assert out.shape == x.shape
        assert out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.isfinite(out).all()
    assert torch.equal(x, before), "augmentation modified its input in place"


def test_batch_pipeline_scales_augments_only_training_and_normalises():
    mean, std = (0.5, 0.25, 0.75), (0.5, 0.25, 0.125)
    calls = []

    class Marker(nn.Module):  # records what it sees, adds a known offset
        def forward(self, x):
            calls.append(x.clone())
            return x + 0.1

    pipe = BatchPipeline(mean, std, Marker())
    raw = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    ev = pipe(raw, train=False)
    assert not calls
    assert ev.dtype == torch.float32
    torch.testing.assert_close(ev, (raw.float() / 255 - m) / s)
    tr = pipe(raw, train=True)
    assert len(calls) == 1 and float(calls[0].max()) <= 1.0  # augmentation sees [0, 1] floats
    torch.testing.assert_close(tr, (raw.float() / 255 + 0.1 - m) / s)
    floats = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(BatchPipeline(mean, std, None)(floats, train=True), (floats - m) / s)
