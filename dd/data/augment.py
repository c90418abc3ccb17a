"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) with exact seeded replay.

Every random number is drawn on the CPU from ``torch.Generator().manual_seed(seed)``,
so calling with the same seed on the real batch and on the synthetic batch gives
image i of both batches the same transform (the "Siamese" part), on any device, bit
for bit. A call draws all its parameters first and moves them to the input's device
in one non-blocking copy (dd.device.to_device), so a GPU never waits for the host;
`DSA.stacked` augments the batches of K models (each with its own seed) with at
most one kernel sequence per transform instead of K.

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
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dd.device import to_device
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

    def plan(self, seed: int, shape) -> list[tuple[str, list[Tensor]]]:
        """The transforms one call applies, in order, each with its parameters (CPU tensors of one value per
        image), drawn in the order the transforms use them."""
        r = _Rand(seed, shape[0], self.batchwise)
        if self.mode == "all":
            return [(name, _TRANSFORMS[name].draw(r, shape)) for name in self.names]
        if self.mode == "one":
            name = self.names[r.choice(len(self.names))]
            return [(name, _TRANSFORMS[name].draw(r, shape))]
        # color_then_one: color's draws come before the pick, as before, so old seeds replay bit for bit
        steps = [("color", _TRANSFORMS["color"].draw(r, shape))] if self.color else []
        if self.choices:
            name = self.choices[r.choice(len(self.choices))]
            steps.append((name, _TRANSFORMS[name].draw(r, shape)))
        return steps

    def __call__(self, x: Tensor, seed: int, rows: slice | None = None, batch: int | None = None) -> Tensor:
        """x augmented with the call `seed` makes. With `rows`, x is those rows of a batch of `batch` images
        (a rank's share, dd.dist): each gets exactly what it would get in the whole batch."""
        if not self.names or x.shape[0] == 0:
            return x
        steps = self.plan(seed, x.shape if rows is None else (batch, *x.shape[1:]))
        if rows is not None:
            steps = [(name, [p[rows] for p in params]) for name, params in steps]
        for (name, _), params in zip(steps, _on_device([p for _, p in steps], x.device)):
            x = _TRANSFORMS[name].apply(x, *params)
        return x

    def stacked(self, x: Tensor, seeds: list[int]) -> Tensor:
        """x (K, n, C, H, W): model k's batch augmented as ``self(x[k], seeds[k])``, the same numbers, with the
        images of every model that applies a transform at a given position of its plan done in one call."""
        if len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per batch ({x.shape[0]}), got {len(seeds)}")
        if not self.names or x.shape[1] == 0:
            return x
        plans = [self.plan(seed, x.shape[1:]) for seed in seeds]
        moved = iter(_on_device([p for plan in plans for _, p in plan], x.device))
        params = [[next(moved) for _ in plan] for plan in plans]
        batches = list(x.unbind(0))
        for pos in range(max(len(plan) for plan in plans)):
            groups: dict[str, list[int]] = {}
            for k, plan in enumerate(plans):
                if pos < len(plan):
                    groups.setdefault(plan[pos][0], []).append(k)
            for name, ks in groups.items():
                together = torch.cat([batches[k] for k in ks])
                args = [torch.cat(parts) for parts in zip(*(params[k][pos] for k in ks))]
                for k, out in zip(ks, _TRANSFORMS[name].apply(together, *args).split(x.shape[1])):
                    batches[k] = out
        return torch.stack(batches)


def _on_device(param_lists: list[list[Tensor]], device) -> list[list[Tensor]]:
    """The parameter lists on `device`, moved in one copy (as float32: every integer drawn is small)."""
    flat = [p for params in param_lists for p in params]
    if not flat or torch.device(device).type == "cpu":
        return [[p.to(torch.float32) for p in params] for params in param_lists]
    moved = iter(to_device(torch.cat([p.to(torch.float32) for p in flat]), device).split([len(p) for p in flat]))
    return [[next(moved) for _ in params] for params in param_lists]


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


class _Transform(NamedTuple):
    draw: Callable  # (r, shape) -> list of CPU tensors, one value per image
    apply: Callable  # (x, *params on x's device, float32) -> augmented x


def _draw_color(r: _Rand, shape) -> list[Tensor]:
    return [r.uniform(-0.5, 0.5) * BRIGHTNESS, r.uniform(0.0, SATURATION), r.uniform(1.0 - CONTRAST, 1.0 + CONTRAST)]


def _color(x: Tensor, b: Tensor, s: Tensor, c: Tensor) -> Tensor:
    b, s, c = (t.to(x.dtype).view(-1, 1, 1, 1) for t in (b, s, c))
    x = x + b
    m = x.mean(dim=1, keepdim=True)  # saturation: a no-op for one channel
    x = (x - m) * s + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * c + m


def _shifts(shape) -> tuple[int, int]:
    h, w = shape[-2], shape[-1]
    return int(h * CROP + 0.5), int(w * CROP + 0.5)


def _draw_crop(r: _Rand, shape) -> list[Tensor]:
    sh, sw = _shifts(shape)
    return [r.randint(-sh, sh + 1), r.randint(-sw, sw + 1)]


def _crop(x: Tensor, ty: Tensor, tx: Tensor) -> Tensor:
    """Integer translation with zero fill, via pad + per-image gather."""
    n, _, h, w = x.shape
    sh, sw = _shifts(x.shape)
    ty, tx = ty.long(), tx.long()
    xp = F.pad(x, [sw, sw, sh, sh])
    rows = torch.arange(h, device=x.device)[None, :] + sh - ty[:, None]  # (n, h)
    cols = torch.arange(w, device=x.device)[None, :] + sw - tx[:, None]  # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = xp[idx, :, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c): advanced dims come first
    return out.permute(0, 3, 1, 2)


def _cut_sizes(shape) -> tuple[int, int]:
    return int(shape[-2] * CUTOUT + 0.5), int(shape[-1] * CUTOUT + 0.5)


def _draw_cutout(r: _Rand, shape) -> list[Tensor]:
    """The square's centre per axis, as the reference's rand_cutout draws it: 0..size for an even side
    (so a band can cover only the last side/2 rows), 0..size-1 for an odd one."""
    ch, cw = _cut_sizes(shape)
    return [r.randint(0, shape[-2] + 1 - ch % 2), r.randint(0, shape[-1] + 1 - cw % 2)]


def _cutout(x: Tensor, cy: Tensor, cx: Tensor) -> Tensor:
    """Zero a square of side CUTOUT*size whose rows are cy - side//2 .. cy - side//2 + side - 1 (and columns
    likewise), clipped at the borders."""
    n, _, h, w = x.shape
    ch, cw = _cut_sizes(x.shape)
    cy, cx = cy.long(), cx.long()
    y0, x0 = (cy - ch // 2)[:, None], (cx - cw // 2)[:, None]
    ys, xs = torch.arange(h, device=x.device)[None, :], torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= y0) & (ys < y0 + ch)  # (n, h)
    in_x = (xs >= x0) & (xs < x0 + cw)  # (n, w)
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


def _draw_flip(r: _Rand, shape) -> list[Tensor]:
    return [r.uniform(0.0, 1.0)]


def _flip(x: Tensor, u: Tensor) -> Tensor:
    return torch.where(u.lt(0.5).view(-1, 1, 1, 1), x.flip(3), x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample x with per-image 2x3 matrices (zero padding); theta is built in float32, as drawn."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _draw_scale(r: _Rand, shape) -> list[Tensor]:
    return [r.uniform(1.0 / SCALE, SCALE), r.uniform(1.0 / SCALE, SCALE)]


def _scale(x: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
    z = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
    return _affine(x, theta)


def _draw_rotate(r: _Rand, shape) -> list[Tensor]:
    return [r.uniform(-ROTATE, ROTATE) * (math.pi / 180.0)]


def _rotate(x: Tensor, a: Tensor) -> Tensor:
    cos, sin, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, sin, z], 1), torch.stack([-sin, cos, z], 1)], 1)
    return _affine(x, theta)


_TRANSFORMS = {
    "color": _Transform(_draw_color, _color), "crop": _Transform(_draw_crop, _crop),
    "cutout": _Transform(_draw_cutout, _cutout), "flip": _Transform(_draw_flip, _flip),
    "scale": _Transform(_draw_scale, _scale), "rotate": _Transform(_draw_rotate, _rotate),
}
