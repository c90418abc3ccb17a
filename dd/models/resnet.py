"""CIFAR-style ResNet18 and the DC literature's ResNet18-AP.

ResNet18-AP downsamples with 2x2 average pooling instead of strided convs;
otherwise the two share every piece of code here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dd.models.convnet import check_image_size, make_norm


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual shortcut; `avg_pool` picks the AP variant."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, avg_pool: bool):
        super().__init__()
        self.avg_pool = avg_pool and stride != 1
        conv_stride = 1 if avg_pool else stride
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=conv_stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_ch)
        if stride != 1 or in_ch != out_ch:
            shortcut: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 1, stride=conv_stride, bias=False)]
            if self.avg_pool:
                shortcut.append(nn.AvgPool2d(2, 2))
            shortcut.append(make_norm(norm, out_ch))
            self.shortcut = nn.Sequential(*shortcut)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        if self.avg_pool:
            out = F.avg_pool2d(out, 2, 2)
        out = self.norm2(self.conv2(out))
        # Out-of-place add: in-place ops would break double backward.
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """BasicBlock x [2,2,2,2], 3x3 stride-1 stem, no max-pool, global avg-pool + linear."""

    avg_pool_downsample = False

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "batch"):
        super().__init__()
        check_image_size(image_size)  # any size works: the head pools globally
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1, bias=False), make_norm(norm, 64), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        in_ch = 64
        for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for s in (stride, 1):
                blocks.append(BasicBlock(in_ch, out_ch, s, norm, self.avg_pool_downsample))
                in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.classifier = nn.Linear(512, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ResNet18_AP(ResNet18):  # noqa: N801 - name used by the DC literature
    """ResNet18 that downsamples by 2x2 average pooling instead of strided convs."""

    avg_pool_downsample = True
