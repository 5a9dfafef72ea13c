"""Fashion-MNIST, SVHN, CINIC-10 and your own image folders: the real torchvision readers on tiny
files written in each dataset's on-disk format (idx, MATLAB .mat, ImageFolder PNG / JPEG trees),
the decode cache, the memory threshold, one-line errors naming the bad file, and the one dataset
registry (shapes for smoke stand-ins and `synthetic.like`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import scipy.io
import torch
import torchvision.datasets.svhn as tv_svhn
from omegaconf import OmegaConf, open_dict
from test_data import write_idx

from saln_exp.data import DATASETS, build_data, cinic10, fixed_shapes, shape_of
from saln_exp.data import folder as folder_module
from saln_exp.data.cinic10 import CLASSES as CINIC_CLASSES
from saln_exp.errors import ConfigError, DataCorruptError, DataMissingError

# ---------------------------------------------------------------- writers of the on-disk formats


def write_svhn(data_dir: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict:
    """`<split>_32x32.mat` as the dataset's site ships them: MATLAB v5, X uint8 32 x 32 x 3 x N
    (height, width, channel, sample), y N x 1 with labels 1..10 (10 is the digit 0)."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "svhn"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (sizes or {"train": 9, "test": 5}).items():
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (
            np.concatenate([[10, 1], rng.integers(1, 11, size=n - 2)])
            .astype(np.uint8)
            .reshape(n, 1)
        )
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, y.ravel())
    return out


def write_folder(split_dir: Path, per_class: dict[str, int], size=(32, 32), ext: str = "png",
                 seed: int = 0) -> dict[str, list[np.ndarray]]:  # fmt: skip
    """`<split>/<class>/<n>.<ext>`: random RGB pixels (exact through PNG's lossless coding)."""
    rng = np.random.default_rng(seed)
    out = {}
    for cls, n in per_class.items():
        (split_dir / cls).mkdir(parents=True, exist_ok=True)
        out[cls] = []
        for i in range(n):
            w, h = size if isinstance(size, tuple) else size[i % len(size)]
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(split_dir / cls / f"{i}.{ext}")
            out[cls].append(pixels)
    return out


def write_cinic(data_dir: Path, n: int = 2, splits=("train", "valid", "test")) -> dict:
    root = data_dir / "CINIC-10"
    return {
        s: write_folder(root / s, dict.fromkeys(CINIC_CLASSES, n), seed=k)
        for k, s in enumerate(splits)
    }


@pytest.fixture
def no_svhn_md5(monkeypatch):
    """torchvision's SVHN compares each .mat file's md5 with the real dataset's; written files
    cannot match. Replace only that comparison by an existence check, so the rest (scipy's
    loadmat, the transpose, label 10 -> 0) runs as is."""
    monkeypatch.setattr(tv_svhn, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_reads_idx_files_native_28_with_its_statistics(make_cfg):
    cfg = make_cfg("dataset=fashion_mnist")
    written = write_idx(Path(cfg.paths.data_dir) / "FashionMNIST" / "raw")
    data = build_data(cfg.dataset, cfg.paths)
    assert data.name == "fashion_mnist" and data.num_classes == 10 and data.in_shape == (1, 28, 28)
    assert not data.augmented and data.val is None
    for split, key in ((data.train, "train"), (data.test, "t10k")):
        images, labels = written[key]
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(labels), 1, 28, 28)
        assert torch.equal(split.images[:, 0], torch.from_numpy(images))
        assert torch.equal(split.targets, torch.from_numpy(labels).long())
    torch.testing.assert_close(data.pipeline.mean.flatten(), torch.tensor([0.2860]))
    torch.testing.assert_close(data.pipeline.std.flatten(), torch.tensor([0.3530]))
    x = data.train.images[:3]
    torch.testing.assert_close(data.pipeline(x, train=False), (x.float() / 255 - 0.2860) / 0.3530)


def test_fashion_mnist_pads_to_32_and_augments_on_request(make_cfg):
    cfg = make_cfg("dataset=fashion_mnist", "dataset.image_size=32", "dataset.augment=true")
    written = write_idx(Path(cfg.paths.data_dir) / "FashionMNIST" / "raw")
    data = build_data(cfg.dataset, cfg.paths)
    assert data.in_shape == (1, 32, 32) and data.augmented
    assert torch.equal(data.train.images[:, 0, 2:30, 2:30], torch.from_numpy(written["train"][0]))
    assert int(data.train.images[:, :, :2].sum()) == 0  # zero frame
    x = data.train.images[:4]
    assert data.pipeline(x, train=True).shape == (4, 1, 32, 32)
    assert not torch.equal(data.pipeline(x, train=True), data.pipeline(x, train=False))
    with open_dict(cfg):
        cfg.dataset.image_size = 27
    with pytest.raises(
        ConfigError, match=r"dataset\.image_size must be at least 28 for fashion_mnist"
    ):
        build_data(cfg.dataset, cfg.paths)


def test_fashion_mnist_damaged_and_missing_files_are_one_line(make_cfg):
    cfg = make_cfg("dataset=fashion_mnist")
    data_dir = Path(cfg.paths.data_dir)
    data_dir.mkdir()
    with pytest.raises(DataMissingError) as err:
        build_data(cfg.dataset, cfg.paths)
    line = one_line(err)
    assert "fashion_mnist not found" in line and "FashionMNIST/raw" in line
    assert "dataset=fashion_mnist dataset.download=true" in line and str(data_dir) in line
    raw = data_dir / "FashionMNIST" / "raw"
    write_idx(raw)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 garbage header")
    with pytest.raises(DataCorruptError) as err:
        build_data(cfg.dataset, cfg.paths)
    assert "corrupt or truncated" in one_line(err) and str(data_dir) in one_line(err)


# ---------------------------------------------------------------- SVHN


def test_svhn_reads_mat_files_nchw_and_maps_label_10_to_0(make_cfg, no_svhn_md5):
    cfg = make_cfg("dataset=svhn")
    written = write_svhn(Path(cfg.paths.data_dir))
    data = build_data(cfg.dataset, cfg.paths)
    assert data.num_classes == 10 and data.in_shape == (3, 32, 32) and not data.augmented
    for split, key in ((data.train, "train"), (data.test, "test")):
        x, y = written[key]
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.images.shape == (len(y), 3, 32, 32)
        # X is height x width x channel x sample
        assert torch.equal(split.images, torch.from_numpy(x).permute(3, 2, 0, 1))
        assert split.images[1, 2, 3, 5] == x[3, 5, 2, 1]
        assert torch.equal(split.targets, torch.from_numpy(y % 10).long())
        assert split.targets[0] == 0 and split.targets[1] == 1  # written as 10 and 1
    torch.testing.assert_close(data.pipeline.mean.flatten(), torch.tensor([0.4377, 0.4438, 0.4728]))
    torch.testing.assert_close(data.pipeline.std.flatten(), torch.tensor([0.1980, 0.2010, 0.1970]))
    with open_dict(cfg):
        cfg.dataset.augment = True
    assert build_data(cfg.dataset, cfg.paths).augmented


def test_svhn_md5_check_runs_and_names_the_file(make_cfg):
    """No bypass: torchvision's md5 comparison fails on written files, which are there, so the
    line says which file is damaged (not "not found")."""
    cfg = make_cfg("dataset=svhn")
    write_svhn(Path(cfg.paths.data_dir))
    with pytest.raises(DataCorruptError) as err:
        build_data(cfg.dataset, cfg.paths)
    line = one_line(err)
    path = Path(cfg.paths.data_dir) / "svhn" / "train_32x32.mat"
    assert f"svhn file {path} is corrupt or truncated" in line
    assert "dataset=svhn dataset.download=true" in line


def damage_mat(path: Path, damage: str) -> None:
    """Spoil a written SVHN .mat file in one of the ways the loader must name in one line."""
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"MATLAB? no" * 30)
    elif damage == "no_X":
        scipy.io.savemat(path, {"images": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1))})
    elif damage == "wrong_shape":
        scipy.io.savemat(path, {"X": np.zeros((16, 16, 3, 2), np.uint8), "y": np.ones((2, 1))})
    else:  # label_11
        scipy.io.savemat(
            path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])}
        )


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no_X", "wrong_shape"])
def test_svhn_damaged_mat_is_one_line_naming_it(make_cfg, no_svhn_md5, damage):
    cfg = make_cfg("dataset=svhn")
    write_svhn(Path(cfg.paths.data_dir))
    path = Path(cfg.paths.data_dir) / "svhn" / "test_32x32.mat"
    damage_mat(path, damage)
    with pytest.raises(DataCorruptError) as err:
        build_data(cfg.dataset, cfg.paths)
    assert str(path) in one_line(err)


def test_svhn_missing_names_the_folder_and_the_download(make_cfg):
    cfg = make_cfg("dataset=svhn")
    with pytest.raises(DataMissingError) as err:
        build_data(cfg.dataset, cfg.paths)
    line = one_line(err)
    assert "svhn not found" in line and "svhn/train_32x32.mat" in line
    assert f"paths.data_dir={cfg.paths.data_dir}" in line


def nchw(x: np.ndarray) -> torch.Tensor:
    """A written X (height x width x channel x sample) as the N x 3 x 32 x 32 the loader gives."""
    return torch.from_numpy(x).permute(3, 2, 0, 1)


def test_svhn_extra_appends_the_extra_split_after_train(make_cfg, no_svhn_md5):
    from saln_exp.config import validate

    cfg = make_cfg("dataset=svhn", "dataset.extra=true")
    validate(cfg)  # a key of conf/dataset/svhn.yaml, so no "unknown key"
    written = write_svhn(Path(cfg.paths.data_dir), {"train": 9, "test": 5, "extra": 7}, seed=3)
    (train_x, train_y), (extra_x, extra_y) = written["train"], written["extra"]
    data = build_data(cfg.dataset, cfg.paths)
    assert len(data.train) == 16 and data.train.images.is_contiguous()
    # train first, then extra: positions 0..8 are train's, 9..15 extra's
    assert torch.equal(data.train.images[:9], nchw(train_x))
    assert torch.equal(data.train.images[9:], nchw(extra_x))
    assert torch.equal(data.train.targets[:9], torch.from_numpy(train_y % 10).long())
    assert torch.equal(data.train.targets[9:], torch.from_numpy(extra_y % 10).long())
    assert data.train.targets[9] == 0 and data.train.targets[10] == 1  # extra's 10 and 1
    assert torch.equal(data.train.indices, torch.arange(16))
    test_x, test_y = written["test"]
    assert torch.equal(data.test.images, nchw(test_x))
    assert torch.equal(data.test.targets, torch.from_numpy(test_y % 10).long())
    # the train split's statistics, not recomputed over train+extra
    torch.testing.assert_close(data.pipeline.mean.flatten(), torch.tensor([0.4377, 0.4438, 0.4728]))
    torch.testing.assert_close(data.pipeline.std.flatten(), torch.tensor([0.1980, 0.2010, 0.1970]))
    # validation is carved from train+extra like any training split
    with open_dict(cfg):
        cfg.dataset.val_fraction = 0.25
    data = build_data(cfg.dataset, cfg.paths)
    assert len(data.val) == 4 and len(data.train) == 12
    every = torch.cat((data.train.indices, data.val.indices)).sort().values
    assert torch.equal(every, torch.arange(16))
    source = torch.cat((nchw(train_x), nchw(extra_x)))
    for split in (data.train, data.val):
        assert torch.equal(split.images, source[split.indices])


def test_svhn_without_extra_never_opens_the_extra_file(make_cfg, no_svhn_md5, monkeypatch):
    cfg = make_cfg("dataset=svhn")
    assert cfg.dataset.extra is False  # the default
    written = write_svhn(Path(cfg.paths.data_dir), {"train": 9, "test": 5, "extra": 7})
    extra = Path(cfg.paths.data_dir) / "svhn" / "extra_32x32.mat"
    extra.write_bytes(b"MATLAB? no" * 30)  # opening it would fail
    opened = []
    real_loadmat = scipy.io.loadmat
    monkeypatch.setattr(
        scipy.io, "loadmat", lambda f, *a, **k: opened.append(str(f)) or real_loadmat(f, *a, **k)
    )
    data = build_data(cfg.dataset, cfg.paths)
    assert sorted(Path(f).name for f in opened) == ["test_32x32.mat", "train_32x32.mat"]
    assert torch.equal(data.train.images, nchw(written["train"][0]))


def test_svhn_extra_missing_names_the_file_and_the_download(make_cfg, no_svhn_md5):
    cfg = make_cfg("dataset=svhn", "dataset.extra=true")
    write_svhn(Path(cfg.paths.data_dir))  # train and test only
    with pytest.raises(DataMissingError) as err:
        build_data(cfg.dataset, cfg.paths)
    line = one_line(err)
    assert "svhn not found" in line and "svhn/extra_32x32.mat" in line
    assert (
        "saln-train dataset=svhn dataset.extra=true dataset.download=true "
        f"paths.data_dir={cfg.paths.data_dir}"
    ) in line


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no_X", "wrong_shape", "label_11"])
def test_svhn_damaged_extra_is_one_line_naming_it(make_cfg, no_svhn_md5, damage):
    cfg = make_cfg("dataset=svhn", "dataset.extra=true")
    write_svhn(Path(cfg.paths.data_dir), {"train": 9, "test": 5, "extra": 7})
    path = Path(cfg.paths.data_dir) / "svhn" / "extra_32x32.mat"
    damage_mat(path, damage)
    with pytest.raises(DataCorruptError) as err:
        build_data(cfg.dataset, cfg.paths)
    line = one_line(err)
    assert str(path) in line
    assert "dataset=svhn dataset.extra=true dataset.download=true" in line


# ---------------------------------------------------------------- CINIC-10


def test_cinic10_reads_the_imagefolder_tree_in_cifar_class_order(make_cfg):
    cfg = make_cfg("dataset=cinic10", "dataset.workers=0")
    written = write_cinic(Path(cfg.paths.data_dir))
    data = build_data(cfg.dataset, cfg.paths)
    assert data.num_classes == 10 and data.in_shape == (3, 32, 32) and data.augmented
    for split, key in ((data.train, "train"), (data.test, "test")):
        assert split.images.dtype == torch.uint8 and split.images.shape == (20, 3, 32, 32)
        assert split.targets.tolist() == [
            c for c in range(10) for _ in range(2)
        ]  # sorted = CIFAR order
        for i, (c, k) in enumerate((c, k) for c in range(10) for k in range(2)):
            expected = torch.from_numpy(written[key][CINIC_CLASSES[c]][k]).permute(2, 0, 1)
            assert torch.equal(split.images[i], expected)  # PNG is lossless
    torch.testing.assert_close(
        data.pipeline.mean.flatten(), torch.tensor([0.47889522, 0.47227842, 0.43047404])
    )
    # valid/ is not read unless asked; with train_on_valid it joins train/ after it
    with open_dict(cfg):
        cfg.dataset.train_on_valid = True
    both = build_data(cfg.dataset, cfg.paths)
    assert len(both.train) == 40 and torch.equal(both.train.images[:20], data.train.images)
    expected = torch.from_numpy(written["valid"]["truck"][1]).permute(2, 0, 1)
    assert torch.equal(both.train.images[-1], expected) and both.train.targets[-1] == 9
    with open_dict(cfg):
        cfg.dataset.augment_policy = "saln"
        cfg.dataset.image_size = 64
    saln = build_data(cfg.dataset, cfg.paths)
    assert saln.in_shape == (3, 64, 64) and saln.train.images.shape[-1] == 32  # resized per batch
    torch.testing.assert_close(saln.pipeline.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    with open_dict(cfg):
        cfg.dataset.augment_policy = "weird"
    with pytest.raises(ConfigError, match="augment_policy"):
        build_data(cfg.dataset, cfg.paths)


def test_cinic10_decode_cache_is_written_once_then_reused(make_cfg, count_opens):
    cfg = make_cfg("dataset=cinic10", "dataset.workers=0")
    write_cinic(Path(cfg.paths.data_dir), splits=("train", "test"))
    first = build_data(cfg.dataset, cfg.paths)
    assert len(count_opens) == 40
    caches = sorted((Path(cfg.paths.cache_dir) / "datasets").iterdir())
    assert [p.name.split("_")[:3] for p in caches] == [
        ["cinic10", "test", "3x32"],
        ["cinic10", "train", "3x32"],
    ]
    stamps = [p.stat().st_mtime_ns for p in caches]
    count_opens.clear()
    second = build_data(cfg.dataset, cfg.paths)
    assert count_opens == []  # read from the cache: no PNG decoded
    assert [p.stat().st_mtime_ns for p in caches] == stamps
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.targets, second.test.targets)


def test_cinic10_missing_and_bad_layout_are_one_line(make_cfg):
    cfg = make_cfg("dataset=cinic10", "dataset.workers=0")
    data_dir = Path(cfg.paths.data_dir)
    with pytest.raises(DataMissingError) as err:
        build_data(cfg.dataset, cfg.paths)
    line = one_line(err)
    assert "cinic10 not found" in line and "CINIC-10/train" in line
    assert "dataset=cinic10 dataset.download=true" in line and str(data_dir) in line
    write_cinic(data_dir, splits=("train", "test"))
    (data_dir / "CINIC-10" / "test" / "ship").rename(data_dir / "CINIC-10" / "test" / "boat")
    with pytest.raises(DataCorruptError) as err:
        build_data(cfg.dataset, cfg.paths)
    line = one_line(err)
    assert str(data_dir / "CINIC-10" / "test") in line and "boat" in line and "ship" in line


def test_cinic10_download_goes_through_torchvision_only_when_asked(make_cfg, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, extract_root=None, **kwargs):
        calls.append((url, download_root, extract_root))
        wrapped = Path(extract_root) / "CINIC-10"  # an archive that wraps its splits in a folder
        write_cinic(wrapped.parent / "tmp", n=1, splits=("train", "test"))
        (wrapped.parent / "tmp" / "CINIC-10").rename(wrapped)
        (wrapped.parent / "tmp").rmdir()

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    cfg = make_cfg("dataset=cinic10", "dataset.workers=0")
    with pytest.raises(DataMissingError):
        build_data(cfg.dataset, cfg.paths)
    assert calls == []  # download=false never fetches
    with open_dict(cfg):
        cfg.dataset.download = True
    data = build_data(cfg.dataset, cfg.paths)
    root = Path(cfg.paths.data_dir) / "CINIC-10"
    assert calls == [(cinic10.URL, cfg.paths.data_dir, str(root))]
    assert len(data.train) == 10 and (root / "train" / "cat").is_dir()
    build_data(cfg.dataset, cfg.paths)
    assert len(calls) == 1  # on disk now: not fetched again

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with open_dict(cfg):
        cfg.paths.data_dir = str(Path(cfg.paths.data_dir) / "elsewhere")
    with pytest.raises(DataMissingError) as err:
        build_data(cfg.dataset, cfg.paths)
    assert one_line(err).startswith("could not download cinic10 into ")


# ---------------------------------------------------------------- your own image folders


def make_folder_cfg(make_cfg, *extra: str):
    return make_cfg("dataset=imagefolder", "dataset.workers=0", "dataset.image_size=16", *extra)


def test_imagefolder_resizes_labels_by_sorted_folder_and_normalises_with_train_statistics(make_cfg):
    cfg = make_folder_cfg(make_cfg)
    root = Path(cfg.paths.data_dir) / "imagefolder"
    sizes = [(40, 30), (16, 16), (25, 57)]
    write_folder(root / "train", {"zebra": 3, "ant": 2, "cat": 4}, size=sizes, ext="jpg")
    test_written = write_folder(
        root / "test", {"zebra": 1, "ant": 2, "cat": 1}, size=(16, 16), seed=1
    )
    (root / "train" / "ant" / "notes.txt").write_text("not an image: ignored")
    data = build_data(cfg.dataset, cfg.paths)
    assert data.num_classes == 3 and data.in_shape == (3, 16, 16) and data.augmented
    assert data.train.images.shape == (9, 3, 16, 16) and data.train.images.dtype == torch.uint8
    assert data.train.targets.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]  # ant, cat, zebra
    assert data.test.targets.tolist() == [0, 0, 1, 2]
    # mean / std: the decoded training images', per channel
    x = data.train.images.double() / 255
    mean = x.mean(dim=(0, 2, 3))
    std = x.permute(1, 0, 2, 3).flatten(1).std(1, unbiased=False)
    torch.testing.assert_close(data.pipeline.mean.flatten().double(), mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(data.pipeline.std.flatten().double(), std, atol=1e-6, rtol=0)
    z = data.pipeline(data.train.images, train=False)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std(unbiased=False)) - 1) < 1e-3
    # given statistics are used as given; grayscale has one channel
    cfg2 = make_folder_cfg(make_cfg, "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]",
                           "dataset.augment=false")  # fmt: skip
    given = build_data(cfg2.dataset, cfg2.paths)
    assert given.pipeline.mean.flatten().tolist() == [0.5] * 3 and not given.augmented
    gray = build_data(make_folder_cfg(make_cfg, "dataset.channels=1").dataset, cfg.paths)
    assert gray.in_shape == (1, 16, 16) and gray.pipeline.mean.numel() == 1
    # an image already at image_size is stored untouched (PNG, no resize)
    ant0 = torch.from_numpy(test_written["ant"][0]).permute(2, 0, 1)
    assert torch.equal(data.test.images[0], ant0)


def test_imagefolder_test_fraction_carves_a_seeded_stratified_test_split(make_cfg):
    cfg = make_folder_cfg(make_cfg, "dataset.test_fraction=0.25", "dataset.val_fraction=0.2")
    root = Path(cfg.paths.data_dir) / "imagefolder"
    write_folder(root / "train", {"a": 8, "b": 8}, size=(16, 16))
    data = build_data(cfg.dataset, cfg.paths)
    assert len(data.test) == 4 and len(data.train) + len(data.val) == 12
    assert torch.bincount(data.test.targets).tolist() == [2, 2]
    everything = torch.cat([data.train.images, data.val.images, data.test.images]).flatten(1)
    assert len({tuple(row.tolist()) for row in everything}) == 16  # disjoint, all images used
    again = build_data(cfg.dataset, cfg.paths)
    assert torch.equal(again.test.images, data.test.images)
    with open_dict(cfg):
        cfg.dataset.split_seed = 1
    assert not torch.equal(build_data(cfg.dataset, cfg.paths).test.images, data.test.images)
    # a test/ folder and a test fraction: ambiguous
    write_folder(root / "test", {"a": 1, "b": 1}, size=(16, 16))
    with pytest.raises(ConfigError) as err:
        build_data(cfg.dataset, cfg.paths)
    assert "dataset.test_fraction=0.25" in one_line(err) and str(root / "test") in one_line(err)


def test_imagefolder_cache_is_reused_and_an_edited_file_is_decoded_again(make_cfg, count_opens):
    cfg = make_folder_cfg(make_cfg)
    root = Path(cfg.paths.data_dir) / "imagefolder"
    write_folder(root / "train", {"a": 3, "b": 3}, size=(20, 20))
    write_folder(root / "test", {"a": 1, "b": 1}, size=(20, 20))
    first = build_data(cfg.dataset, cfg.paths)
    assert len(count_opens) == 8
    count_opens.clear()
    second = build_data(cfg.dataset, cfg.paths)
    assert count_opens == [] and torch.equal(first.train.images, second.train.images)
    # the cache is keyed by each file's size and mtime: an edited image is never served stale
    edited = root / "train" / "b" / "2.png"
    PIL.Image.new("RGB", (20, 20), (255, 0, 0)).save(edited)
    os.utime(edited, ns=(1, 1))
    third = build_data(cfg.dataset, cfg.paths)
    assert len(count_opens) == 6  # train/ again, test/ from the cache
    assert third.train.images[5, 0].float().mean() > 250 and third.train.images[5, 1].max() < 5
    # another size is another entry; a damaged cache entry is a warning and a new decode
    entries = sorted((Path(cfg.paths.cache_dir) / "datasets").glob("imagefolder_test_*"))
    entries[0].write_bytes(b"not a torch file")
    count_opens.clear()
    fourth = build_data(cfg.dataset, cfg.paths)
    assert len(count_opens) == 2 and torch.equal(fourth.test.images, first.test.images)


def test_imagefolder_workers_decode_the_same_pixels(make_cfg):
    cfg = make_folder_cfg(make_cfg)
    root = Path(cfg.paths.data_dir) / "imagefolder"
    write_folder(
        root / "train", {"a": 300, "b": 5}, size=[(16, 16), (20, 12)]
    )  # two decode batches
    write_folder(root / "test", {"a": 1, "b": 1})
    with open_dict(cfg):
        cfg.paths.cache_dir = None
    in_process = build_data(cfg.dataset, cfg.paths)
    with open_dict(cfg):
        cfg.dataset.workers = 2
    workers = build_data(cfg.dataset, cfg.paths)
    assert torch.equal(in_process.train.images, workers.train.images)
    assert torch.equal(in_process.train.targets, workers.train.targets)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["garbage_png", "truncated_jpeg"])
def test_imagefolder_undecodable_image_is_one_line_naming_it(make_cfg, damage, workers):
    cfg = make_folder_cfg(make_cfg, f"dataset.workers={workers}")
    root = Path(cfg.paths.data_dir) / "imagefolder"
    write_folder(root / "train", {"a": 300, "b": 3}, ext="jpg")  # two batches: workers do run
    write_folder(root / "test", {"a": 1, "b": 1})
    bad = root / "train" / "b" / "1.jpg"
    if damage == "garbage_png":
        bad = bad.with_suffix(".png")
        bad.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing sensible")
    else:
        bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataCorruptError) as err:
        build_data(cfg.dataset, cfg.paths)
    line = one_line(err)
    assert f"imagefolder: {bad} cannot be read as an image" in line and "Traceback" not in line
    assert not list(
        Path(cfg.paths.cache_dir).glob("datasets/imagefolder_train_*")
    )  # nothing half-decoded cached


def test_imagefolder_layout_errors_are_one_line_naming_the_folder(make_cfg):
    cfg = make_folder_cfg(make_cfg)
    root = Path(cfg.paths.data_dir) / "imagefolder"
    with pytest.raises(DataMissingError) as err:  # no train/
        build_data(cfg.dataset, cfg.paths)
    assert f"imagefolder: {root / 'train'} not found" in one_line(err)
    write_folder(root / "train", {"a": 2, "b": 2})
    with pytest.raises(DataMissingError) as err:  # no test/ and no test fraction
        build_data(cfg.dataset, cfg.paths)
    assert str(root / "test") in one_line(err) and "dataset.test_fraction" in one_line(err)
    write_folder(root / "test", {"a": 1, "b": 1})
    (root / "train" / "c").mkdir()
    (root / "test" / "c").mkdir()
    with pytest.raises(DataCorruptError) as err:  # an empty class folder
        build_data(cfg.dataset, cfg.paths)
    assert f"class folder {root / 'train' / 'c'} holds no image" in one_line(err)
    (root / "train" / "c").rmdir()
    with pytest.raises(DataCorruptError) as err:  # test/ has a class train/ lacks
        build_data(cfg.dataset, cfg.paths)
    assert (
        str(root / "test") in one_line(err) and "not in" in one_line(err) and ": c" in one_line(err)
    )
    (root / "test" / "c").rmdir()
    flat = make_folder_cfg(make_cfg, "dataset.root=flat", "dataset.test_fraction=0.5")
    (Path(cfg.paths.data_dir) / "flat" / "train").mkdir(parents=True)
    PIL.Image.new("RGB", (4, 4)).save(Path(cfg.paths.data_dir) / "flat" / "train" / "x.png")
    with pytest.raises(DataCorruptError) as err:  # images but no class folders
        build_data(flat.dataset, flat.paths)
    assert "holds no class folder" in one_line(err)
    # an absolute root is used as is
    absolute = make_folder_cfg(make_cfg, f"dataset.root={root}", "paths.data_dir=/nonexistent")
    assert build_data(absolute.dataset, absolute.paths).num_classes == 2


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_imagefolder_reads_a_symlink_loop_once_and_names_it(make_cfg, caplog, storage):
    cfg = make_folder_cfg(make_cfg, f"dataset.storage={storage}")
    root = Path(cfg.paths.data_dir) / "imagefolder"
    write_folder(root / "train", {"cat": 4, "dog": 4}, size=(16, 16))
    write_folder(root / "test", {"cat": 1, "dog": 1}, size=(16, 16))
    loop = root / "train" / "cat" / "loop"
    loop.symlink_to(".", target_is_directory=True)  # cat/loop/loop/... would never end
    elsewhere = write_folder(root.parent / "more_dogs", {"dog": 2}, size=(16, 16), seed=3)
    (root / "train" / "dog" / "more").symlink_to(root.parent / "more_dogs" / "dog")
    data = build_data(cfg.dataset, cfg.paths)
    assert torch.bincount(data.train.targets).tolist() == [4, 6]  # each file once; links followed
    assert f"{loop} leads to a folder read already" in caplog.text
    if storage == "memory":
        linked = torch.from_numpy(elsewhere["dog"][0]).permute(2, 0, 1)
        assert torch.equal(data.train.images[8], linked)  # dog/more/0.png sorts after dog/3.png


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_imagefolder_reads_a_file_name_that_is_not_utf8(make_cfg, storage):
    cfg = make_folder_cfg(make_cfg, f"dataset.storage={storage}")
    root = Path(cfg.paths.data_dir) / "imagefolder"
    write_folder(root / "train", {"a": 2, "b": 2}, size=(16, 16))
    write_folder(root / "test", {"a": 1, "b": 1}, size=(16, 16))
    latin1 = os.path.join(os.fsencode(root / "train" / "a"), b"caf\xe9.png")  # not UTF-8
    os.rename(os.fsencode(root / "train" / "a" / "1.png"), latin1)
    data = build_data(cfg.dataset, cfg.paths)
    assert torch.bincount(data.train.targets).tolist() == [2, 2]
    again = build_data(cfg.dataset, cfg.paths)  # from the cache, keyed by the bytes of the name
    assert torch.equal(again.train.targets, data.train.targets)


def test_imagefolder_over_the_memory_threshold_is_refused_before_decoding(make_cfg, count_opens):
    cfg = make_folder_cfg(
        make_cfg,
        "dataset.storage=memory",
        "dataset.max_decoded_gib=0.000001",
        "dataset.image_size=64",
    )
    root = Path(cfg.paths.data_dir) / "imagefolder"
    write_folder(root / "train", {"a": 2, "b": 2})
    write_folder(root / "test", {"a": 1, "b": 1})
    count_opens.clear()
    with pytest.raises(ConfigError) as err:
        build_data(cfg.dataset, cfg.paths)
    line = one_line(err)
    assert "6 images at 3x64x64 decode to 72.0 KiB, over dataset.max_decoded_gib=1e-06" in line
    assert "lower dataset.image_size" in line and "dataset.storage=auto to stream" in line
    assert count_opens == []  # refused before any decode
    assert folder_module.decoded_bytes(6, 3, 64) == 6 * 3 * 64 * 64


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("dataset.channels=2", r"dataset\.channels must be 1"),
        ("dataset.test_fraction=1.0", r"dataset\.test_fraction must be in"),
        ("dataset.augment_policy=assist", r"dataset\.augment_policy must be one of"),
        ("dataset.mean=[0.5,0.5,0.5]", r"dataset\.mean and dataset\.std go together"),
        ("dataset.mean=[0.5]", r"go together"),
        ("dataset.max_decoded_gib=0", r"dataset\.max_decoded_gib must be positive"),
        ("dataset.workers=-1", r"dataset\.workers"),
        ("dataset.root=null", r"dataset\.root must name"),
    ],
)
def test_imagefolder_bad_values_are_config_errors(make_cfg, override, match):
    cfg = make_folder_cfg(make_cfg, override)
    with pytest.raises(ConfigError, match=match):
        build_data(cfg.dataset, cfg.paths)


def test_imagefolder_mean_std_of_the_wrong_length_is_a_config_error(make_cfg):
    cfg = make_folder_cfg(make_cfg, "dataset.mean=[0.5]", "dataset.std=[0.2]")
    with pytest.raises(ConfigError, match=r"lists of 3 number"):
        build_data(cfg.dataset, cfg.paths)


# ---------------------------------------------------------------- the one registry


def test_every_dataset_config_is_registered_with_a_shape(make_cfg):
    from saln_exp import PROJECT_ROOT

    names = {p.stem for p in (PROJECT_ROOT / "conf" / "dataset").glob("*.yaml")}
    assert names == set(DATASETS)
    expected = {
        "digits": (1, 32, 10), "mnist": (1, 32, 10), "fashion_mnist": (1, 28, 10),
        "svhn": (3, 32, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100),
        "cinic10": (3, 32, 10), "pets": (3, 224, 37), "synthetic": (1, 8, 10),
    }  # fmt: skip
    for name, shape in expected.items():
        cfg = make_cfg(f"dataset={name}")
        assert shape_of(cfg.dataset, cfg.paths.data_dir) == shape, name
    cfg = make_cfg("dataset=mnist", "dataset.image_size=28")
    assert shape_of(cfg.dataset) == (1, 28, 10)  # the config's side wins


def test_imagefolder_shape_counts_the_class_folders(make_cfg):
    cfg = make_folder_cfg(make_cfg, "dataset.channels=1")
    with pytest.raises(DataMissingError, match="train not found"):
        shape_of(cfg.dataset, cfg.paths.data_dir)
    for cls in ("x", "y", "z", "w"):
        (Path(cfg.paths.data_dir) / "imagefolder" / "train" / cls).mkdir(parents=True)
    assert shape_of(cfg.dataset, cfg.paths.data_dir) == (1, 16, 4)


def test_unknown_dataset_name_is_an_error_not_a_fallback():
    with pytest.raises(
        ConfigError, match=r"dataset\.name must be one of \[.*'svhn'.*\], got 'imagenet'"
    ):
        shape_of(OmegaConf.create({"name": "imagenet"}))


def test_synthetic_like_comes_from_the_registry(make_cfg):
    for like in ("fashion_mnist", "svhn", "cinic10", "pets"):
        cfg = make_cfg(
            "dataset=synthetic", f"dataset.like={like}", "dataset.n_train=40", "dataset.n_test=10"
        )
        shape = fixed_shapes()[like]
        if like == "pets":
            assert shape_of(cfg.dataset) == (3, 224, 37)
            continue
        data = build_data(cfg.dataset, cfg.paths)
        assert (*data.in_shape[:1], data.in_shape[-1], data.num_classes) == shape
    cfg = make_cfg("dataset=synthetic", "dataset.like=imagefolder")  # its shape is in your files
    with pytest.raises(ConfigError, match=r"dataset\.like must be one of"):
        build_data(cfg.dataset, cfg.paths)


def test_smoke_takes_its_stand_in_shape_from_the_registry(make_cfg):
    """smoke=true builds a synthetic stand-in of the dataset's shape, read from the one registry:
    a newly added dataset never falls back to a made-up shape, an unknown one is refused."""
    from saln_exp.train import apply_smoke

    for name in ("fashion_mnist", "svhn", "cinic10"):
        cfg = make_cfg(f"dataset={name}", "smoke=true")
        channels, size, classes = fixed_shapes()[name]
        apply_smoke(cfg)
        assert (cfg.dataset.channels, cfg.dataset.num_classes) == (channels, classes)
        assert cfg.dataset.image_size == min(size, 32)


# ---------------------------------------------------------------- through the runner and the CLI


def write_any(name: str, data_dir: Path) -> None:
    if name == "fashion_mnist":
        write_idx(data_dir / "FashionMNIST" / "raw", n_train=40, n_test=20)
    elif name == "svhn":
        write_svhn(data_dir, {"train": 40, "test": 20})
    elif name == "cinic10":
        write_cinic(data_dir, n=3, splits=("train", "test"))
    else:
        write_folder(
            data_dir / "imagefolder" / "train",
            {"a": 12, "b": 12, "c": 12},
            size=[(40, 30), (32, 32)],
        )
        write_folder(data_dir / "imagefolder" / "test", {"a": 4, "b": 4, "c": 4})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion_mnist", "svhn", "cinic10", "imagefolder"])
def test_cli_trains_one_epoch_on_written_files(tmp_path, name):
    from conftest import run_cli  # local: ruff sorts `conftest` differently per invocation

    data_dir = tmp_path / "data"
    write_any(name, data_dir)
    env = {"OMP_NUM_THREADS": "1"}
    if name == "svhn":  # written .mat files cannot match the real md5 sums: see no_svhn_md5
        env["PYTHONPATH"] = str(write_md5_bypass(tmp_path))
    proc = run_cli(
        f"dataset={name}", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}", "model=lenet", "selector=uniform", "trainer.epochs=1",
        "logger=none", "trainer.progress=false", "trainer.threads=1", "dataset.batch_size=16",
        f"hydra.run.dir={tmp_path / 'run'}", *(["dataset.workers=0"] if name in ("cinic10", "imagefolder") else []),
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    run_dir = tmp_path / "run"
    assert (run_dir / "summary.json").exists(), sorted(run_dir.iterdir())


@pytest.mark.slow
def test_cli_corrupt_image_is_one_line_exit_2_naming_it(tmp_path):
    from conftest import run_cli

    data_dir = tmp_path / "data"
    write_any("imagefolder", data_dir)
    bad = data_dir / "imagefolder" / "test" / "b" / "2.png"
    bad.write_bytes(b"garbage")
    proc = run_cli(
        "dataset=imagefolder", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}", "logger=none", "dataset.workers=0",
        f"hydra.run.dir={tmp_path / 'run'}", env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def write_md5_bypass(tmp_path: Path) -> Path:
    """A sitecustomize that replaces torchvision SVHN's md5 comparison by an existence check in
    the CLI's own process (what the no_svhn_md5 fixture does in this one)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nimport torchvision.datasets.svhn as s\n"
        "s.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)\n"
    )
    return site
