"""ConvNet: the small conv stack used throughout the dataset-distillation literature.

Also holds the norm / activation builders that the other models share, so every
model spells the options the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dd.errors import DDError

NORMS = ("instance", "batch", "layer", "group", "none")
ACTS = ("relu", "leakyrelu", "sigmoid", "gelu")
POOLS = ("avg", "max", "none")


def check_choice(what: str, value, allowed: tuple[str, ...]) -> str:
    """Return `value` if it is one of `allowed`, else raise a one-line DDError."""
    if value not in allowed:
        raise DDError(f"{what} {value!r} is unknown; choose one of: {', '.join(allowed)}")
    return value


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation layer for a conv feature map with `channels` channels."""
    check_choice("norm", norm, NORMS)
    if norm == "instance":
        # GroupNorm with one channel per group == instance norm with affine
        # parameters; unlike InstanceNorm2d it has no running stats (MTT convention).
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(4, channels, affine=True)
    return nn.Identity()


def make_act(act: str) -> nn.Module:
    """Activation module; never in-place so double backward stays valid."""
    check_choice("act", act, ACTS)
    if act == "relu":
        return nn.ReLU()
    if act == "leakyrelu":
        return nn.LeakyReLU(0.01)
    if act == "sigmoid":
        return nn.Sigmoid()
    return nn.GELU()


def check_image_size(image_size) -> tuple[int, int]:
    """Normalise `image_size` to an (H, W) pair of positive ints."""
    try:
        h, w = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise DDError(f"image_size {image_size!r} is invalid; expected (height, width)") from None
    if h < 1 or w < 1:
        raise DDError(f"image_size {image_size!r} is invalid; height and width must be >= 1")
    return h, w


def auto_depth(image_size: tuple[int, int]) -> int:
    """Number of pooled blocks that brings the smaller side to about 4 pixels."""
    return max(1, round(math.log2(min(image_size) / 4)))


class ConvNet(nn.Module):
    """`depth` x [conv3x3 -> norm -> act -> pool2x2] then a linear classifier.

    `first_pad` is the first convolution's padding (None = 1, like the others). The
    Dataset Condensation code uses 3 for 28x28 inputs, so they are seen as 32x32
    and a depth-3 net ends on a 4x4 map; the auto depth uses that padded size.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int | None = None,
        norm: str = "instance",
        act: str = "relu",
        pool: str = "avg",
        first_pad: int | None = None,
    ):
        super().__init__()
        h, w = check_image_size(image_size)
        check_choice("norm", norm, NORMS)
        check_choice("act", act, ACTS)
        check_choice("pool", pool, POOLS)
        if not isinstance(width, int) or width < 1:
            raise DDError(f"convnet width {width!r} is invalid; expected a positive integer")
        if first_pad is None:
            first_pad = 1
        if not isinstance(first_pad, int) or isinstance(first_pad, bool) or first_pad < 0:
            raise DDError(f"convnet first_pad {first_pad!r} is invalid; expected an integer >= 0 or null")
        # The size the first conv outputs; every later conv keeps the size (padding 1).
        h, w = h + 2 * first_pad - 2, w + 2 * first_pad - 2
        if h < 1 or w < 1:
            raise DDError(f"convnet first_pad {first_pad} is too small for image size {image_size}")
        seen = (h, w)
        if depth is None:
            depth = auto_depth(seen)
        if not isinstance(depth, int) or depth < 1:
            raise DDError(f"convnet depth {depth!r} is invalid; expected a positive integer")

        layers: list[nn.Module] = []
        in_ch = channels
        for i in range(depth):
            pad = first_pad if i == 0 else 1
            layers += [nn.Conv2d(in_ch, width, 3, padding=pad), make_norm(norm, width), make_act(act)]
            if pool != "none":
                layers.append(nn.AvgPool2d(2, 2) if pool == "avg" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise DDError(
                        f"convnet depth {depth} is too deep for image size {image_size}; "
                        f"use depth <= {auto_depth(seen)} or pool 'none'"
                    )
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.feature_shape = (width, h, w)  # the map before flatten; handy for tests/coresets
        self.classifier = nn.Linear(width * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
