"""Models: every architecture on every data shape it supports, features + classifier = forward,
shapes and classes taken from the data, and pretrained weights from torch's cache (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from saln_exp.data import build_data
from saln_exp.errors import ConfigError, DataMissingError
from saln_exp.models import MODELS, build_model

CIFAR_SHAPES = [((1, 32, 32), 10), ((3, 32, 32), 10), ((3, 32, 32), 100)]
CASES = [
    *[pytest.param("lenet", {}, s, c, id=f"lenet-{s[0]}x{s[1]}-{c}") for s, c in CIFAR_SHAPES],
    *[
        pytest.param("fcnet", {"hidden": h}, s, c, id=f"fcnet{h}-{s[0]}x{s[1]}-{c}")
        for h in (100, 1000, 3000)
        for s, c in CIFAR_SHAPES
    ],
    *[
        pytest.param("resnet18", {}, s, c, id=f"resnet18-{s[0]}x{s[1]}-{c}")
        for s, c in CIFAR_SHAPES
    ],
    pytest.param(
        "resnet18_imagenet", {"pretrained": False}, (3, 224, 224), 37, id="resnet18_imagenet-pets"
    ),
    pytest.param(
        "resnet18_imagenet", {"pretrained": False}, (1, 32, 32), 10, id="resnet18_imagenet-gray"
    ),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Small CPU forwards: two intra-op threads on a busy 2-core machine spend their time in
    OpenMP barriers (measured 40 s vs 17 s for this file); one thread is as fast when idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model_cfg(name: str, **options):
    return OmegaConf.create({"name": name, **options})


class FirstLayer:
    """Records the first convolution or linear layer the input meets (by running, not by name)."""

    def __init__(self, model: nn.Module):
        self.seen: list[nn.Module] = []
        self.hooks = [
            m.register_forward_hook(lambda mod, _i, _o: self.seen.append(mod))
            for m in model.modules()
            if isinstance(m, nn.Conv2d | nn.Linear)
        ]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


@pytest.mark.parametrize(("name", "options", "shape", "classes"), CASES)
def test_forward_shapes_and_features_compose(name, options, shape, classes):
    torch.manual_seed(0)
    model = build_model(model_cfg(name, **options), shape, classes).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad(), FirstLayer(model) as first_layer:
        out = model(x)
        feats = model.forward_features(x)
        composed = model.classifier(feats)
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.out_features == classes
    assert feats.shape == (2, model.classifier.in_features)
    torch.testing.assert_close(composed, out)
    first = first_layer.seen[0]  # the input layer takes the data's channels
    if isinstance(first, nn.Conv2d):
        assert first.in_channels == shape[0]
    else:
        assert first.in_features == shape[0] * shape[1] * shape[2]
    if name == "fcnet":
        assert model.classifier.in_features == options["hidden"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_reach_the_input_layer(name):
    options = {"pretrained": False} if name == "resnet18_imagenet" else {}
    size = max(MODELS[name].min_size, 16)
    model = build_model(model_cfg(name, **options), (1, size, size), 3).train()
    x = torch.randn(4, 1, size, size)
    with FirstLayer(model) as first_layer:
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    first = first_layer.seen[0]
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("like", "model", "shape", "classes"),
    [
        ("mnist", "lenet", (1, 32, 32), 10),
        ("cifar100", "resnet18", (3, 32, 32), 100),
        ("cifar10", "fcnet", (3, 32, 32), 10),
    ],
)
def test_channels_and_classes_come_from_the_data(make_cfg, like, model, shape, classes):
    cfg = make_cfg(
        f"model={model}",
        "dataset=synthetic",
        f"dataset.like={like}",
        "dataset.n_train=8",
        "dataset.n_test=4",
    )
    data = build_data(cfg.dataset, cfg.paths)
    net = build_model(cfg.model, data.in_shape, data.num_classes).eval()
    x = data.pipeline(data.test.images, train=False)
    with torch.no_grad():
        assert net(x).shape == (4, classes)
    assert data.in_shape == shape


def test_lenet_on_8x8_is_a_one_line_config_error(make_cfg):
    cfg = make_cfg("model=lenet", "dataset=digits", "dataset.image_size=8")
    data = build_data(cfg.dataset, cfg.paths)
    with pytest.raises(ConfigError) as err:
        build_model(cfg.model, data.in_shape, data.num_classes)
    message = str(err.value)
    assert "\n" not in message
    assert "model=lenet" in message and "8x8" in message
    assert "dataset.image_size" in message and "model=fcnet" in message  # what to change


@pytest.mark.parametrize("name", sorted(MODELS))
def test_declared_minimum_input_size_works(name):
    """`min_size` is what the ConfigError promises: that size must run, one less must be refused."""
    size = MODELS[name].min_size
    options = {"pretrained": False} if name == "resnet18_imagenet" else {}
    model = build_model(model_cfg(name, **options), (3, size, size), 5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    if size > 1:
        with pytest.raises(ConfigError, match=f"at least {size}x{size}"):
            build_model(model_cfg(name, **options), (3, size - 1, size - 1), 5)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_lenet_15_pixels_would_collapse():
    """Why LeNet's minimum is 16: at 15 the second pool sees 1x1 and the raw module fails."""
    with pytest.raises(RuntimeError):
        MODELS["lenet"](1, 10, 15)(torch.zeros(1, 1, 15, 15))


def test_resnet18_is_the_cifar_variant():
    model = build_model(model_cfg("resnet18"), (3, 32, 32), 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    n_params = sum(p.numel() for p in model.parameters())
    assert 11_000_000 < n_params < 11_300_000  # kuangliu's ResNet18: 11.17 M


# ---------------------------------------------------------------- pretrained weights, offline


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_pretrained_absent_offline_names_the_exact_path(torch_home, make_cfg):
    cfg = make_cfg("model=resnet18_imagenet")
    assert cfg.model.pretrained is True and cfg.model.download is False
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(DataMissingError) as err:
        build_model(cfg.model, (3, 224, 224), 37)
    message = str(err.value)
    assert str(expected) in message and "\n" not in message
    assert "model.download=true" in message
    assert not expected.exists()  # nothing fetched


def test_pretrained_loads_cached_weights_with_a_new_head(torch_home, make_cfg):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        reference.conv1.weight.normal_()  # recognisable values
    path = Path(torch_home) / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)  # torch.hub does not re-hash a cached file

    cfg = make_cfg("model=resnet18_imagenet")
    model = build_model(cfg.model, (3, 224, 224), 37).eval()
    loaded = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert isinstance(model.backbone.fc, nn.Identity)
    assert model.classifier.in_features == 512 and model.classifier.out_features == 37
    with torch.no_grad():
        x = torch.randn(2, 3, 224, 224)
        reference.eval()
        reference.fc = nn.Identity()
        torch.testing.assert_close(model.forward_features(x), reference(x))
        assert model(x).shape == (2, 37)

    # grayscale data keeps the pretrained stem: a gray image gives what its RGB copy gave
    gray = build_model(cfg.model, (1, 64, 64), 10).eval()
    with torch.no_grad():
        g = torch.rand(2, 1, 64, 64)
        torch.testing.assert_close(
            gray.backbone.conv1(g), model.backbone.conv1(g.repeat(1, 3, 1, 1))
        )
