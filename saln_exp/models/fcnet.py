"""ASSIST's FCNet: one hidden layer, in -> hidden -> out."""

from torch import Tensor, nn

from saln_exp.models.base import register_model


@register_model("fcnet")
class FCNet(nn.Module):
    min_size = 1

    def __init__(self, in_channels: int, num_classes: int, image_size: int, hidden: int = 1000):
        super().__init__()
        self.hidden = nn.Linear(in_channels * image_size * image_size, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.hidden(x.flatten(1)).relu()

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))
