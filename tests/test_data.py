"""Dataset loading: the real torchvision readers on tiny files written in each dataset's on-disk
format, the offline "not found" error, splits, and label noise."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from omegaconf import open_dict

from saln_exp.data import LOADERS, build_data
from saln_exp.data.noise import corrupt_labels
from saln_exp.errors import ConfigError, DataMissingError

# ---------------------------------------------------------------- writers of the on-disk formats


def write_mnist(data_dir: Path, n_train: int = 12, n_test: int = 7, seed: int = 0) -> dict:
    """MNIST's idx files where torchvision's MNIST reads them."""
    return write_idx(data_dir / "MNIST" / "raw", n_train, n_test, seed)


def write_idx(raw: Path, n_train: int = 12, n_test: int = 7, seed: int = 0) -> dict:
    """idx files (MNIST's format, also Fashion-MNIST's), uncompressed, big-endian headers."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # no zeros: padding shows
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )
        out[split] = (images, labels)
    return out


def write_cifar(data_dir: Path, name: str, seed: int = 0) -> dict:
    """Python pickles: `data` uint8 N x 3072 (R plane, G plane, B plane, each row-major)."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, classes, label_key = data_dir / "cifar-10-batches-py", 10, "labels"
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        meta_file, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
        sizes = {"train": 3, "test": 5}
    else:
        folder, classes, label_key = data_dir / "cifar-100-python", 100, "fine_labels"
        files = {"train": ["train"], "test": ["test"]}
        meta_file, meta = "meta", {"fine_label_names": [f"f{i}" for i in range(100)]}
        sizes = {"train": 9, "test": 5}
    folder.mkdir(parents=True)
    out = {}
    for split, names in files.items():
        datas, labels = [], []
        for fname in names:
            data = rng.integers(0, 256, size=(sizes[split], 3072), dtype=np.uint8)
            y = rng.integers(0, classes, size=sizes[split]).tolist()
            entry = {"batch_label": fname, "data": data, label_key: y}
            if name == "cifar100":
                entry["coarse_labels"] = [v // 5 for v in y]
            with open(folder / fname, "wb") as fh:
                pickle.dump(entry, fh)
            datas.append(data)
            labels += y
        out[split] = (np.concatenate(datas), np.array(labels))
    with open(folder / meta_file, "wb") as fh:
        pickle.dump(meta, fh)
    return out


BREEDS = ["Abyssinian", "american_bulldog", "Bengal"]  # class ids 1, 2, 3 in the annotation files
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


def write_pets(data_dir: Path, per_class: dict[str, int] | None = None) -> dict:
    """`images/<Breed>_<n>.jpg` of varied sizes and `annotations/{trainval,test}.txt` lines
    `<image id> <class id 1..37> <species> <breed id>`. Each breed has a flat colour."""
    per_class = per_class or {"trainval": 4, "test": 2}
    base = data_dir / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    sizes = [(40, 30), (64, 48), (33, 57), (50, 50)]
    out = {}
    counter = 0
    for split, n in per_class.items():
        lines, labels = [], []
        for c, breed in enumerate(BREEDS):
            for _ in range(n):
                counter += 1
                image_id = f"{breed}_{counter}"
                w, h = sizes[counter % len(sizes)]
                PIL.Image.new("RGB", (w, h), COLOURS[c]).save(
                    base / "images" / f"{image_id}.jpg", quality=95
                )
                species = 1 if breed[0].isupper() else 2
                lines.append(f"{image_id} {c + 1} {species} {c + 1}")
                labels.append(c)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        out[split] = np.array(labels)
    return out


@pytest.fixture
def no_cifar_md5(monkeypatch):
    """torchvision's CIFAR classes compare the md5 of every file (batches and meta) with the real
    dataset's; written files cannot match. Replace only that comparison by a plain existence
    check, so the rest of the loader (finding files, unpickling, reshaping, meta) runs as is."""
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


# ---------------------------------------------------------------- MNIST


def test_mnist_reads_idx_files_and_pads_to_32(make_cfg):
    cfg = make_cfg("dataset=mnist")
    written = write_mnist(Path(cfg.paths.data_dir))
    data = build_data(cfg.dataset, cfg.paths)
    assert data.num_classes == 10 and data.in_shape == (1, 32, 32)
    assert data.val is None and not data.augmented
    for split, key in ((data.train, "train"), (data.test, "t10k")):
        images, labels = written[key]
        assert split.images.dtype == torch.uint8
        assert split.images.shape == (len(labels), 1, 32, 32)
        assert torch.equal(split.images[:, 0, 2:30, 2:30], torch.from_numpy(images))
        border = split.images.clone()
        border[:, :, 2:30, 2:30] = 0
        assert int(border.abs().sum()) == 0  # the 2-pixel frame is zeros
        assert torch.equal(split.targets, torch.from_numpy(labels).long())
        assert split.targets.dtype == torch.long
        assert torch.equal(split.indices, torch.arange(len(labels)))


def test_mnist_image_size_28_keeps_native_and_too_small_is_a_config_error(make_cfg):
    cfg = make_cfg("dataset=mnist", "dataset.image_size=28")
    written = write_mnist(Path(cfg.paths.data_dir))
    data = build_data(cfg.dataset, cfg.paths)
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(written["train"][0]))
    with open_dict(cfg):
        cfg.dataset.image_size = 33  # odd growth: one extra zero column/row on one side
    assert build_data(cfg.dataset, cfg.paths).in_shape == (1, 33, 33)
    with open_dict(cfg):
        cfg.dataset.image_size = 20
    with pytest.raises(ConfigError, match=r"dataset\.image_size"):
        build_data(cfg.dataset, cfg.paths)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_pickles_in_nchw_layout(make_cfg, no_cifar_md5, name):
    cfg = make_cfg(f"dataset={name}")
    written = write_cifar(Path(cfg.paths.data_dir), name)
    data = build_data(cfg.dataset, cfg.paths)
    assert data.num_classes == (10 if name == "cifar10" else 100)
    assert data.in_shape == (3, 32, 32)
    for split, key in ((data.train, "train"), (data.test, "test")):
        rows, labels = written[key]
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.images.shape == (len(labels), 3, 32, 32)
        # row layout: channel plane c, then row h, then column w
        n, c, h, w = len(labels) - 1, 1, 3, 5
        assert split.images[n, c, h, w] == rows[n, c * 1024 + h * 32 + w]
        assert torch.equal(split.images.flatten(1), torch.from_numpy(rows))
        assert torch.equal(split.targets, torch.from_numpy(labels).long())  # batches in order
        assert torch.equal(split.indices, torch.arange(len(labels)))
    # cifar configs turn ASSIST's augmentation on; it runs on training batches only
    assert data.augmented
    x = data.train.images[:4]
    assert torch.equal(data.pipeline(x, train=False), data.pipeline(x, train=False))
    assert not torch.equal(data.pipeline(x, train=True), data.pipeline(x, train=False))
    with open_dict(cfg):
        cfg.dataset.augment = False
    assert not build_data(cfg.dataset, cfg.paths).augmented


def test_cifar_md5_bypass_keeps_the_existence_check(make_cfg, no_cifar_md5):
    cfg = make_cfg("dataset=cifar10")
    write_cifar(Path(cfg.paths.data_dir), "cifar10")
    (Path(cfg.paths.data_dir) / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataMissingError, match="cifar10 not found"):
        build_data(cfg.dataset, cfg.paths)


# ---------------------------------------------------------------- Oxford-IIIT Pet


def test_pets_reads_jpegs_resizes_and_labels_from_zero(make_cfg):
    cfg = make_cfg("dataset=pets", "dataset.image_size=32", "dataset.val_fraction=0")
    written = write_pets(Path(cfg.paths.data_dir))
    data = build_data(cfg.dataset, cfg.paths)
    assert data.num_classes == 37 and data.in_shape == (3, 32, 32) and data.augmented
    for split, key in ((data.train, "trainval"), (data.test, "test")):
        assert split.images.dtype == torch.uint8
        assert split.images.shape == (len(written[key]), 3, 32, 32)
        assert torch.equal(split.targets, torch.from_numpy(written[key]).long())
        for img, y in zip(split.images, split.targets, strict=True):  # flat colours survive JPEG
            colour = torch.tensor(COLOURS[int(y)], dtype=torch.float32).view(3, 1, 1)
            assert float((img.float() - colour).abs().max()) <= 8
    # ImageNet normalisation
    torch.testing.assert_close(data.pipeline.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_pets_decoded_tensor_cache_is_written_then_reused(make_cfg, monkeypatch):
    cfg = make_cfg("dataset=pets", "dataset.image_size=32", "dataset.val_fraction=0")
    write_pets(Path(cfg.paths.data_dir))
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(
        PIL.Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k)
    )

    first = build_data(cfg.dataset, cfg.paths)
    assert len(opened) == 12 + 6
    caches = sorted((Path(cfg.paths.cache_dir) / "datasets").glob("*.pt"))
    assert [p.name.split("_")[:3] for p in caches] == [
        ["pets", "test", "32"],
        ["pets", "trainval", "32"],
    ]
    stamps = [p.stat().st_mtime_ns for p in caches]
    assert all(p.suffix == ".pt" for p in caches[0].parent.iterdir())  # no temporary left behind

    opened.clear()
    second = build_data(cfg.dataset, cfg.paths)
    assert opened == []  # nothing decoded
    assert [p.stat().st_mtime_ns for p in caches] == stamps  # nothing rewritten
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.targets, second.test.targets)

    with open_dict(cfg):  # another size is another cache entry
        cfg.dataset.image_size = 16
    assert build_data(cfg.dataset, cfg.paths).in_shape == (3, 16, 16)
    assert len(opened) == 18
    assert len(list((Path(cfg.paths.cache_dir) / "datasets").glob("*.pt"))) == 4

    # a changed file list (another download) is never served stale pixels
    opened.clear()
    with open_dict(cfg):
        cfg.dataset.image_size = 32
    ann = Path(cfg.paths.data_dir) / "oxford-iiit-pet" / "annotations" / "trainval.txt"
    ann.write_text("\n".join(ann.read_text().splitlines()[:-1]) + "\n")
    third = build_data(cfg.dataset, cfg.paths)
    assert len(third.train) == 11 and len(opened) == 11  # trainval re-decoded, test from cache


# ---------------------------------------------------------------- offline, no files


@pytest.fixture
def restore_torch_determinism():
    """run() seeds and switches torch's deterministic mode on, process-wide; undo it after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.mark.parametrize(
    "name",
    ["mnist", "cifar10", "cifar100", "pets", "fashion_mnist", "svhn", "cinic10", "imagefolder"],
)
def test_missing_dataset_exits_2_with_one_line(
    make_cfg, tmp_path, capsys, restore_torch_determinism, name
):
    from saln_exp.train import run

    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = make_cfg(f"dataset={name}", f"paths.data_dir={empty}")
    with pytest.raises(SystemExit) as exc:
        run(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(empty) in err
    if name != "imagefolder":  # your own folder has nothing to download
        assert "dataset.download=true" in err and f"dataset={name}" in err
    assert list(empty.iterdir()) == []  # nothing downloaded or created


@pytest.mark.slow
def test_missing_dataset_cli(tmp_path):
    from conftest import run_cli  # local: ruff sorts `conftest` differently per invocation

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(
        "dataset=cifar100",
        f"paths.data_dir={empty}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "logger=none",
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(empty) in lines[0] and "dataset.download=true" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- digits and synthetic


def test_digits_shapes_and_values(make_cfg):
    cfg = make_cfg("dataset=digits")
    data = build_data(cfg.dataset, cfg.paths)
    assert data.in_shape == (1, 32, 32) and data.num_classes == 10
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == 450  # test_fraction 0.25, rounded up by scikit-learn
    assert data.train.images.dtype == torch.float32
    assert float(data.train.images.min()) >= 0.0 and float(data.train.images.max()) <= 1.0
    with open_dict(cfg):
        cfg.dataset.image_size = 8
    native = build_data(cfg.dataset, cfg.paths)
    assert native.in_shape == (1, 8, 8)
    # normalised training inputs have mean ~0, std ~1
    x = native.pipeline(native.train.images, train=True)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3


def test_synthetic_like_takes_shape_and_classes(make_cfg):
    for like, shape, classes in (
        ("cifar10", (3, 32, 32), 10),
        ("cifar100", (3, 32, 32), 100),
        ("mnist", (1, 32, 32), 10),
    ):
        cfg = make_cfg(
            "dataset=synthetic", f"dataset.like={like}", "dataset.n_train=200", "dataset.n_test=100"
        )
        data = build_data(cfg.dataset, cfg.paths)
        assert data.in_shape == shape and data.num_classes == classes
        assert data.train.targets.max() < classes and data.test.images.shape[1:] == shape
    cfg = make_cfg(
        "dataset=synthetic", "dataset.channels=2", "dataset.image_size=5", "dataset.num_classes=4"
    )
    data = build_data(cfg.dataset, cfg.paths)
    assert data.in_shape == (2, 5, 5) and data.num_classes == 4
    assert torch.bincount(data.train.targets).tolist() == [128] * 4  # balanced classes


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_val_split_is_seeded_disjoint_stratified_and_keyed_by_source_index(make_cfg, name):
    cfg = make_cfg(f"dataset={name}", "dataset.val_fraction=0.2")
    source = LOADERS[name](cfg.dataset, cfg.paths.data_dir)
    a, b = build_data(cfg.dataset, cfg.paths), build_data(cfg.dataset, cfg.paths)
    n = len(source.train_targets)
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(x.indices, y.indices) and torch.equal(x.images, y.images)
    train_idx, val_idx = set(a.train.indices.tolist()), set(a.val.indices.tolist())
    assert not train_idx & val_idx
    assert train_idx | val_idx == set(range(n))
    assert abs(len(val_idx) - 0.2 * n) <= 1
    # indices are positions in the source training split
    assert torch.equal(a.val.images, source.train_images[a.val.indices])
    assert torch.equal(a.val.targets, source.train_targets[a.val.indices])
    assert torch.equal(a.train.images, source.train_images[a.train.indices])
    # stratified: each class is in validation in proportion, to within one sample
    per_class = torch.bincount(source.train_targets, minlength=10).float()
    in_val = torch.bincount(a.val.targets, minlength=10).float()
    assert ((in_val - 0.2 * per_class).abs() <= 1).all()
    # another split_seed, another split (same source for digits: the test split is untouched)
    with open_dict(cfg):
        cfg.dataset.split_seed = 1
    c = build_data(cfg.dataset, cfg.paths)
    assert not torch.equal(c.val.indices, a.val.indices)


def test_small_val_fraction_with_many_classes_still_splits(make_cfg):
    """Fewer validation samples than classes: cannot stratify, must still split (not crash)."""
    cfg = make_cfg("dataset=synthetic", "dataset.like=cifar100", "dataset.n_train=300",
                   "dataset.n_test=10", "dataset.val_fraction=0.1")  # fmt: skip
    data = build_data(cfg.dataset, cfg.paths)
    assert len(data.val) == 30 and len(data.train) == 270
    assert not set(data.val.indices.tolist()) & set(data.train.indices.tolist())


def test_val_fraction_leaving_no_training_data_is_a_config_error(make_cfg):
    cfg = make_cfg("dataset=synthetic", "dataset.n_train=10", "dataset.val_fraction=0.99")
    with pytest.raises(ConfigError, match=r"dataset\.val_fraction"):
        build_data(cfg.dataset, cfg.paths)


def test_synthetic_unknown_like_is_a_config_error(make_cfg):
    cfg = make_cfg("dataset=synthetic", "dataset.like=imagenet")
    with pytest.raises(ConfigError, match=r"dataset\.like must be one of"):
        build_data(cfg.dataset, cfg.paths)


def test_synthetic_is_deterministic_per_split_seed(make_cfg):
    cfg = make_cfg("dataset=synthetic")
    a, b = build_data(cfg.dataset, cfg.paths), build_data(cfg.dataset, cfg.paths)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(
        a.test.targets, b.test.targets
    )
    with open_dict(cfg):
        cfg.dataset.split_seed = 3
    assert not torch.equal(build_data(cfg.dataset, cfg.paths).train.images, a.train.images)


# ---------------------------------------------------------------- label noise


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
def test_label_noise_exact_per_class_reproducible_and_recorded(make_cfg, kind):
    cfg = make_cfg("dataset=synthetic", "dataset.n_train=600", "dataset.val_fraction=0.25",
                   "dataset.label_noise.rate=0.2", f"dataset.label_noise.kind={kind}")  # fmt: skip
    data = build_data(cfg.dataset, cfg.paths)
    source = LOADERS["synthetic"](cfg.dataset, cfg.paths.data_dir)
    clean = data.clean_targets
    assert torch.equal(clean, source.train_targets[data.train.indices])
    changed = data.train.targets != clean
    # exactly round(rate * n_c) per class (45 training samples per class here -> 9)
    for c in range(10):
        n_c = int((clean == c).sum())
        assert int(changed[clean == c].sum()) == round(0.2 * n_c)
    # recorded by source index, over the whole source training split
    assert data.noisy.shape == (600,) and data.noisy.dtype == torch.bool
    assert torch.equal(data.noisy[data.train.indices], changed)
    assert not data.noisy[data.val.indices].any()
    assert torch.equal(data.val.targets, source.train_targets[data.val.indices])  # val stays clean
    new, old = data.train.targets[changed], clean[changed]
    if kind == "pair":
        assert torch.equal(new, (old + 1) % 10)
    else:
        assert (new != old).all() and len(set((new - old).remainder(10).tolist())) > 3
    # reproducible for the same split_seed, different for another
    again = build_data(cfg.dataset, cfg.paths)
    assert torch.equal(again.train.targets, data.train.targets) and torch.equal(
        again.noisy, data.noisy
    )
    with open_dict(cfg):
        cfg.dataset.split_seed = 5
    other = build_data(cfg.dataset, cfg.paths)
    assert not torch.equal(other.noisy, data.noisy)


def test_label_noise_off_records_nothing(make_cfg):
    cfg = make_cfg("dataset=synthetic")
    data = build_data(cfg.dataset, cfg.paths)
    assert data.clean_targets is None
    assert data.noisy.shape == (512,) and not data.noisy.any()


def test_symmetric_noise_is_uniform_over_the_other_classes():
    targets = torch.arange(9000) % 3  # three classes, 3 000 each
    noisy, flipped = corrupt_labels(targets, 3, 0.5, "symmetric", seed=0)
    assert len(flipped) == 4500
    for c in range(3):
        dest = noisy[flipped][targets[flipped] == c]
        counts = torch.bincount(dest, minlength=3)
        assert counts[c] == 0
        # 1 500 draws from two equally likely classes: sd 19, allow 5 sd
        assert (counts[torch.arange(3) != c] - 750).abs().max() < 100


def test_unequal_class_sizes_round_per_class():
    targets = torch.tensor([0] * 7 + [1] * 13 + [2] * 1)
    noisy, flipped = corrupt_labels(targets, 3, 0.3, "pair", seed=1)
    per_class = torch.bincount(targets[flipped], minlength=3).tolist()
    assert per_class == [round(0.3 * 7), round(0.3 * 13), round(0.3 * 1)]
    assert torch.equal(noisy[flipped], (targets[flipped] + 1) % 3)
    with pytest.raises(ValueError, match=r"label_noise\.kind"):
        corrupt_labels(targets, 3, 0.3, "bogus", seed=1)


def test_cifar_saln_policy_uses_imagenet_statistics_and_resizes_batches_on_the_device(
    make_cfg, no_cifar_md5
):
    cfg = make_cfg("dataset=cifar10", "dataset.augment_policy=saln", "dataset.image_size=64")
    write_cifar(Path(cfg.paths.data_dir), "cifar10")
    data = build_data(cfg.dataset, cfg.paths)
    assert data.in_shape == (3, 64, 64)
    assert data.train.images.shape[-1] == 32  # stored at native size
    assert torch.allclose(data.pipeline.mean.flatten(), torch.tensor((0.485, 0.456, 0.406)))
    out = data.pipeline(data.train.images[:4], train=True)
    assert out.shape == (4, 3, 64, 64)
    assert data.pipeline(data.test.images[:4], train=False).shape == (4, 3, 64, 64)
    with pytest.raises(ConfigError, match="augment_policy"):
        build_data(make_cfg("dataset=cifar10", "dataset.augment_policy=weird").dataset, cfg.paths)
