"""One look for every figure: a fixed colour and marker per selector, names in words.

The colours are Okabe and Ito's colour-blind-safe set (black, orange, sky blue, bluish green,
yellow, blue, vermillion, reddish purple, and its grey), extended with four of Paul Tol's muted
colours for the loss rules; every selector also has its own marker, so figures stay readable in
grey scale. A selector keeps its colour in every figure of every report, whatever else is plotted.
"""

from __future__ import annotations

import re

from saln_exp.selectors import SELECTORS, Selector

# selector -> (colour, marker), as each selector declares it (`Selector.style`)
SELECTOR_STYLES: dict[str, tuple[str, str]] = {name: cls.style for name, cls in SELECTORS.items()}
UNKNOWN_STYLE = Selector.style  # a selector that sets none: visible, never confused with another

DATASET_NAMES = {
    "digits": "digits", "mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
    "pets": "Oxford-IIIT Pet", "synthetic": "synthetic",
}  # fmt: skip
MODEL_NAMES = {
    "lenet": "LeNet",
    "resnet18": "ResNet-18",
    "resnet18_imagenet": "ResNet-18 (ImageNet)",
}


def selector_style(selector: str | None) -> tuple[str, str]:
    return SELECTOR_STYLES.get(str(selector), UNKNOWN_STYLE)


def model_name(model: str | None) -> str:
    model = str(model)
    if model.startswith("fcnet"):
        return "FCNet" + model[len("fcnet") :]
    return MODEL_NAMES.get(model, model)


def setting_title(datasets: list, models: list) -> str:
    """`digits, LeNet` (or `MNIST, FCNet100 / FCNet1000` when a figure holds several)."""
    data = " / ".join(DATASET_NAMES.get(str(d), str(d)) for d in dict.fromkeys(datasets))
    nets = " / ".join(model_name(m) for m in dict.fromkeys(models))
    return f"{data}, {nets}"


def file_stem(name: str) -> str:
    """A name `\\includegraphics` takes as is: letters, digits, `_` and `-` only (no `=`, no
    second dot, no spaces)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
