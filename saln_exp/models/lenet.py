"""LeNet-5 as in kuangliu/pytorch-cifar, the implementation ASSIST trained (1- or 3-channel input)."""

import torch.nn.functional as F
from torch import Tensor, nn

from saln_exp.models.base import register_model


@register_model("lenet")
class LeNet(nn.Module):
    # 16 -> conv5 12 -> pool 6 -> conv5 2 -> pool 1: the smallest side that leaves 1x1 (15 leaves 0)
    min_size = 16

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.classifier = nn.Linear(84, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate activations: SALN's `features=learner` and JEST-style diagnostics use them."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return F.relu(self.fc2(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))
