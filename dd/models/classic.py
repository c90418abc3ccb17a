"""Classic architectures of the DC/DSA model zoo: MLP, LeNet, AlexNet, VGG11.

Each is sized from `image_size` up front (shape arithmetic, no dry-run forward)
so it works at 16, 28, 32 and 64 px without touching BatchNorm statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from dd.errors import DDError
from dd.models.convnet import check_image_size, make_norm


class MLP(nn.Module):
    """Flatten -> 128 -> ReLU -> 128 -> ReLU -> classifier."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        h, w = check_image_size(image_size)
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * h * w, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(128, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class LeNet(nn.Module):
    """conv6-5 / maxpool / conv16-5 / maxpool / fc120 / fc84 / classifier."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        h, w = check_image_size(image_size)
        # Below 32 px pad the first conv (the MNIST LeNet trick) so 28 px ends at
        # 5x5 like the 32 px net and 16 px still leaves a 2x2 map.
        pad = 2 if min(h, w) < 32 else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
        )
        h, w = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
        if h < 1 or w < 1:
            raise DDError(f"lenet needs images of at least 12x12 px, got {image_size}")
        self.fc = nn.Sequential(nn.Linear(16 * h * w, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class AlexNet(nn.Module):
    """The DC-literature small AlexNet: 5 convs (128/192/256/192/192), 3 max-pools."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        h, w = check_image_size(image_size)
        # Pad the first 5x5 conv so each side becomes a multiple of 8 (28 -> 32),
        # which the three 2x2 pools then divide exactly.
        pad = (2 + (-h % 8) // 2, 2 + (-w % 8) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 192, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
        )
        h, w = (h + 2 * pad[0] - 4) // 8, (w + 2 * pad[1] - 4) // 8
        if h < 1 or w < 1:
            raise DDError(f"alexnet needs images of at least 2x2 px, got {image_size}")
        self.classifier = nn.Linear(192 * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG11 with a norm after every conv (instance norm by default)."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "instance"):
        super().__init__()
        h, w = check_image_size(image_size)
        layers: list[nn.Module] = []
        in_ch = channels
        for i, item in enumerate(VGG11_CFG):
            if item == "M":
                # Small inputs run out of pixels before the cfg runs out of pools.
                # Skip a pool that would leave convs running on a 1x1 map: instance
                # norm over one pixel outputs a constant and would erase the input.
                convs_follow = i + 1 < len(VGG11_CFG)
                if min(h, w) >= (4 if convs_follow else 2):
                    layers.append(nn.MaxPool2d(2, 2))
                    h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(in_ch, item, 3, padding=1), make_norm(norm, item), nn.ReLU()]
                in_ch = item
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
