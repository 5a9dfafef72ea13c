"""Models: one short file per family, registered by name. `build_model` is the only entry point.

Every model exposes `forward_features(x)` (penultimate activations) and `classifier` (the last
linear layer): SALN's learner features and the final-layer figures need both.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from saln_exp.errors import ConfigError
from saln_exp.models.fcnet import FCNet
from saln_exp.models.lenet import LeNet
from saln_exp.models.resnet import CifarResNet18, ImageNetResNet18

MODELS: dict[str, type[nn.Module]] = {
    "lenet": LeNet,
    "fcnet": FCNet,
    "resnet18": CifarResNet18,
    "resnet18_imagenet": ImageNetResNet18,
}


def model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ConfigError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name]


def check_input(name: str, in_shape: tuple[int, int, int]) -> None:
    _channels, height, width = in_shape
    cls = model_class(name)
    if min(height, width) < cls.min_size:
        raise ConfigError(
            f"model={name} needs inputs of at least {cls.min_size}x{cls.min_size}, the dataset gives "
            f"{height}x{width}; raise dataset.image_size or pick model=fcnet"
        )


def build_model(cfg: DictConfig, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Input channels and class count come from the data, never from the model config."""
    check_input(cfg.name, in_shape)
    channels, size, _ = in_shape
    extra = {k: v for k, v in cfg.items() if k != "name"}
    return model_class(cfg.name)(channels, num_classes, size, **extra)
