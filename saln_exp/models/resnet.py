"""ResNet-18 twice: the CIFAR variant ASSIST trained (kuangliu/pytorch-cifar: 3x3 stem, no
max-pool) and torchvision's ImageNet one SALN fine-tuned (new head sized to the classes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from saln_exp.models.base import register_model
from saln_exp.models.weights import pretrained_state_dict


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register_model("resnet18")
class CifarResNet18(nn.Module):
    min_size = 8  # four stages, three of them stride 2

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.in_planes = 64
        self.layer1 = self._stage(64, 2, stride=1)
        self.layer2 = self._stage(128, 2, stride=2)
        self.layer3 = self._stage(256, 2, stride=2)
        self.layer4 = self._stage(512, 2, stride=2)
        self.classifier = nn.Linear(512, num_classes)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


@register_model("resnet18_imagenet")
class ImageNetResNet18(nn.Module):
    """torchvision's resnet18; `classifier` is its fc layer re-sized to the dataset's classes."""

    min_size = 32

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        pretrained: bool = False,
        download: bool = False,
    ):
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        if pretrained:
            weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
            net.load_state_dict(pretrained_state_dict(weights, "resnet18", download))
        if (
            in_channels != 3
        ):  # grayscale: sum the RGB filters, the usual way to keep pretrained stems
            w = (
                net.conv1.weight.detach().sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
                / in_channels
            )
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            with torch.no_grad():
                net.conv1.weight.copy_(w)
        self.classifier = nn.Linear(net.fc.in_features, num_classes)
        net.fc = nn.Identity()
        self.backbone = net

    def forward_features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.backbone(x))
