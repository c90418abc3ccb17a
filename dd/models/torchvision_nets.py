"""torchvision's ResNet-18 under ddlab's model interface, so checkpoints saved from it load as they are:
the teachers SRe2L and RDED release and train are torchvision ResNet-18s (`conv1`, `bn1`, `layer1.0...`,
`fc` keys), which ddlab's own ResNet18 names differently.

`stem="cifar"` (the default) is the authors' "resnet18_modified" for small images: a 3x3 stride-1 `conv1`
and no max-pool; `stem="imagenet"` keeps torchvision's 7x7 stride-2 conv and max-pool."""

from __future__ import annotations

import torch
from torch import nn

from dd.models.convnet import check_choice, check_image_size

STEMS = ("cifar", "imagenet")


class TorchvisionResNet18(nn.Module):
    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], stem: str = "cifar"):
        super().__init__()
        import torchvision

        check_image_size(image_size)
        check_choice("stem", stem, STEMS)
        net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # torchvision's module names at the top level: a saved state dict's keys match ours
        for name, module in net.named_children():
            self.add_module(name, module)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))
