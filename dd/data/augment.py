"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) with exact seeded replay.

Every random number is drawn on the CPU from ``torch.Generator().manual_seed(seed)``
and only then moved to the input's device, so calling with the same seed on the
real batch and on the synthetic batch gives image i of both batches the same
transform (the "Siamese" part), on any device, bit for bit.

Each parameter (brightness, crop shift, ...) gets its own generator derived
from the seed, so image i receives the same parameters whatever the batch size.

How a strategy such as ``color_crop_cutout_flip_scale_rotate`` is applied (``mode``):

- ``"one"`` (default, the reference code's 'S' mode): ONE listed transform per
  call, ``color`` counting as one, so with the full strategy color is applied
  one call in six;
- ``"color_then_one"`` (ddlab's earlier behaviour): ``color`` always, then one
  of the other listed transforms;
- ``"all"`` (the reference's 'M' mode): every listed transform, in order.

Parameters are drawn per image (``batchwise=True`` shares image 0's parameters
with the whole batch, like the reference code's batch mode for gradient matching).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dd.errors import DDError

DSA_TRANSFORMS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_MODES: tuple[str, ...] = ("one", "color_then_one", "all")

# Magnitudes from the DSA paper / reference settings.
BRIGHTNESS = 1.0  # add U(-0.5, 0.5) * BRIGHTNESS
SATURATION = 2.0  # scale distance to channel mean by U(0, SATURATION)
CONTRAST = 0.5  # scale distance to image mean by U(1 - CONTRAST, 1 + CONTRAST)
CROP = 0.125  # translate by up to this fraction of the size
CUTOUT = 0.5  # side of the zeroed square as a fraction of the size
SCALE = 1.2  # x and y scale in U(1/SCALE, SCALE)
ROTATE = 15.0  # degrees, U(-ROTATE, ROTATE)


def parse_strategy(strategy: str, flip: bool = True) -> tuple[str, ...]:
    """Split ``a_b_c`` into transform names; ``none``/empty gives ()."""
    if strategy is None or strategy.strip().lower() in ("", "none"):
        return ()
    names = tuple(s for s in strategy.strip().lower().split("_") if s)
    for n in names:
        if n not in DSA_TRANSFORMS:
            raise DDError(
                f"DSA transform '{n}' in strategy '{strategy}' is unknown; "
                f"use '_'-joined names from: {', '.join(DSA_TRANSFORMS)} (or 'none')"
            )
    if not flip:
        names = tuple(n for n in names if n != "flip")
    return names


class DSA:
    """Callable augmentation ``dsa(x, seed)``; differentiable w.r.t. ``x``.

    ``flip=False`` (digit-like data) drops ``flip`` from the strategy; a strategy
    that was only ``flip`` then becomes the identity rather than an error, so
    one config can serve every dataset. ``mode`` is one of DSA_MODES (see above).
    """

    def __init__(
        self,
        strategy: str = "color_crop_cutout_flip_scale_rotate",
        flip: bool = True,
        batchwise: bool = False,
        mode: str = "one",
    ):
        if mode not in DSA_MODES:
            raise DDError(f"DSA mode {mode!r} is unknown; choose one of: {', '.join(DSA_MODES)}")
        self.strategy = strategy
        self.names = parse_strategy(strategy, flip)
        self.color = "color" in self.names
        self.choices = tuple(n for n in self.names if n != "color")  # what color_then_one picks from
        self.batchwise = batchwise
        self.mode = mode

    def __repr__(self) -> str:
        return f"DSA({list(self.names)}, mode={self.mode!r}, batchwise={self.batchwise})"

    def __call__(self, x: Tensor, seed: int) -> Tensor:
        if not self.names or x.shape[0] == 0:
            return x
        r = _Rand(seed, x.shape[0], self.batchwise)
        if self.mode == "all":
            for name in self.names:
                x = _TRANSFORMS[name](x, r)
        elif self.mode == "one":
            x = _TRANSFORMS[self.names[r.choice(len(self.names))]](x, r)
        else:
            # Color's draws come before the pick, as before, so old seeds replay bit for bit.
            if self.color:
                x = _TRANSFORMS["color"](x, r)
            if self.choices:
                x = _TRANSFORMS[self.choices[r.choice(len(self.choices))]](x, r)
        return x


class _Rand:
    """CPU random draws for one call: a fresh generator per parameter, seeded from ``seed``."""

    def __init__(self, seed: int, n: int, batchwise: bool):
        self.master = torch.Generator(device="cpu").manual_seed(int(seed))
        self.n, self.batchwise = n, batchwise

    def _gen(self) -> torch.Generator:
        sub = int(torch.randint(2**62, (1,), generator=self.master))
        return torch.Generator(device="cpu").manual_seed(sub)

    def _shape(self, t: Tensor) -> Tensor:
        return t[:1].expand(self.n).clone() if self.batchwise else t

    def choice(self, k: int) -> int:
        """One index in [0, k), shared by the whole batch."""
        return int(torch.randint(k, (1,), generator=self._gen()))

    def uniform(self, low: float, high: float) -> Tensor:
        """n float32 draws from U(low, high)."""
        return self._shape(torch.rand(self.n, generator=self._gen()) * (high - low) + low)

    def randint(self, low: int, high: int) -> Tensor:
        """n int64 draws from [low, high)."""
        return self._shape(torch.randint(low, high, (self.n,), generator=self._gen()))


def _color(x: Tensor, r: _Rand) -> Tensor:
    n = x.shape[0]
    b = r.uniform(-0.5, 0.5) * BRIGHTNESS
    s = r.uniform(0.0, SATURATION)
    c = r.uniform(1.0 - CONTRAST, 1.0 + CONTRAST)
    b, s, c = (t.to(x.device, x.dtype).view(n, 1, 1, 1) for t in (b, s, c))
    x = x + b
    m = x.mean(dim=1, keepdim=True)  # saturation: a no-op for one channel
    x = (x - m) * s + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * c + m


def _crop(x: Tensor, r: _Rand) -> Tensor:
    """Integer translation with zero fill, via pad + per-image gather."""
    n, _, h, w = x.shape
    sh, sw = int(h * CROP + 0.5), int(w * CROP + 0.5)
    ty = r.randint(-sh, sh + 1).to(x.device)
    tx = r.randint(-sw, sw + 1).to(x.device)
    xp = F.pad(x, [sw, sw, sh, sh])
    rows = torch.arange(h, device=x.device)[None, :] + sh - ty[:, None]  # (n, h)
    cols = torch.arange(w, device=x.device)[None, :] + sw - tx[:, None]  # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = xp[idx, :, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c): advanced dims come first
    return out.permute(0, 3, 1, 2)


def _cutout(x: Tensor, r: _Rand) -> Tensor:
    """Zero a square of side CUTOUT*size centred at a random pixel (clipped at borders)."""
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    cy = r.randint(0, h).to(x.device)
    cx = r.randint(0, w).to(x.device)
    y0, x0 = (cy - ch // 2)[:, None], (cx - cw // 2)[:, None]
    ys, xs = torch.arange(h, device=x.device)[None, :], torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= y0) & (ys < y0 + ch)  # (n, h)
    in_x = (xs >= x0) & (xs < x0 + cw)  # (n, w)
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


def _flip(x: Tensor, r: _Rand) -> Tensor:
    n = x.shape[0]
    do = r.uniform(0.0, 1.0).lt(0.5).to(x.device).view(n, 1, 1, 1)
    return torch.where(do, x.flip(3), x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample x with per-image 2x3 matrices built on the CPU (zero padding)."""
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _scale(x: Tensor, r: _Rand) -> Tensor:
    n = x.shape[0]
    sx = r.uniform(1.0 / SCALE, SCALE)
    sy = r.uniform(1.0 / SCALE, SCALE)
    z = torch.zeros(n)
    theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
    return _affine(x, theta)


def _rotate(x: Tensor, r: _Rand) -> Tensor:
    n = x.shape[0]
    a = r.uniform(-ROTATE, ROTATE) * (math.pi / 180.0)
    cos, sin, z = torch.cos(a), torch.sin(a), torch.zeros(n)
    theta = torch.stack([torch.stack([cos, sin, z], 1), torch.stack([-sin, cos, z], 1)], 1)
    return _affine(x, theta)


_TRANSFORMS = {
    "color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate,
}  # fmt: skip
