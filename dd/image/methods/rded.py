"""RDED (Sun et al., CVPR 2024): realistic and diverse patches chosen by a teacher, stitched, relabelled.

Per class, as the authors' code (synthesize/utils.py there): draw `mipc` real training images of the
class at random; cut `num_crop` random square crops from each (RandomResizedCrop with ratio 1, area
U(scale_min, scale_max)), resized to size/factor; score each crop by the observer's (the teacher's)
cross-entropy on the class, a crop smaller than the image zero-padded to full size around its centre;
keep each image's best crop, then the ipc * factor^2 images whose best crop scores lowest; stitch them
factor x factor to an image: tile k (row-major) of image i is the (k * ipc + i)-th best crop. Relabel:
the teacher's soft labels on every evaluation epoch's crops, stored with the set (dd.image.relabel).
The authors use factor 2 on ImageNet and factor 1 (whole crops, no stitching) on CIFAR-10 with ConvNet.
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from tqdm.auto import tqdm

from dd import seeds
from dd.device import to_device
from dd.errors import DDError
from dd.image.base import METHODS, SynSet
from dd.image.relabel import apply_crops, relabelled_set
from dd.image.teachers import get_teacher
from dd.registry import RunContext


@dataclass
class RDEDConfig:
    """Select the crops a teacher finds most realistic, stitch them, relabel (RDED)."""

    name: str = MISSING
    factor: int = 2  # crops per side of a stitched image (ImageNet: 2; the CIFAR-10 ConvNet script: 1)
    num_crop: int = 5  # random crops scored per real image
    mipc: int = 300  # real images per class drawn as candidates (fewer if the class holds fewer)
    scale_min: float = 0.08  # crop area range (torchvision's RandomResizedCrop default, as RDED)
    scale_max: float = 1.0


def check_config(m, ipc: int) -> None:
    for key in ("factor", "num_crop", "mipc"):
        if int(m[key]) <= 0:
            raise DDError(f"method.{key}={m[key]} is not allowed; it must be a positive integer")
    if not 0 < m.scale_min <= m.scale_max <= 1:
        raise DDError(f"method.scale_min={m.scale_min}, method.scale_max={m.scale_max}: need 0 < min <= max <= 1")


def square_crops(n: int, generator: torch.Generator, scale: tuple[float, float]) -> torch.Tensor:
    """(n, 5) crops (as dd.image.relabel.draw_crops) of ratio 1, area U(scale), uniformly placed, no flip."""
    u = torch.rand(n, 3, generator=generator)
    side = torch.sqrt(scale[0] + (scale[1] - scale[0]) * u[:, 0])
    cy, cx = side / 2 + (1 - side) * u[:, 1], side / 2 + (1 - side) * u[:, 2]
    return torch.stack([cy, cx, side, side, torch.zeros(n)], 1)


def crop_to(x: torch.Tensor, crops: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's crop resampled to `size`."""
    full = apply_crops(x, crops)
    return full if tuple(full.shape[-2:]) == tuple(size) else F.interpolate(full, size=size, mode="bilinear",
                                                                           align_corners=False, antialias=True)


def pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad around the centre to `size` (the observer scores small crops at full size)."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


def tile_sizes(size: int, factor: int) -> list[int]:
    """Tile sides along one axis: the remainder goes to the first tiles (as the authors' mix_images)."""
    base, extra = divmod(size, factor)
    return [base + (1 if i < extra else 0) for i in range(factor)]


def stitch(crops: torch.Tensor, ipc: int, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """(ipc * factor^2, C, h, w) crops, best first -> (ipc, C, H, W): tile k of image i is crop k * ipc + i."""
    out = torch.zeros(ipc, crops.shape[1], *size, dtype=crops.dtype, device=crops.device)
    k, top = 0, 0
    for th in tile_sizes(size[0], factor):
        left = 0
        for tw in tile_sizes(size[1], factor):
            part = crops[k * ipc : (k + 1) * ipc]
            if tuple(part.shape[-2:]) != (th, tw):
                part = F.interpolate(part, size=(th, tw), mode="nearest")
            out[:, :, top : top + th, left : left + tw] = part
            left += tw
            k += 1
        top += th
    return out


@torch.no_grad()
def select_class(teacher, data, c: int, ipc: int, m, seed: int, device) -> torch.Tensor:
    """The stitched images of class c."""
    size = tuple(data.image_size)
    tile = (math.ceil(size[0] / m.factor), math.ceil(size[1] / m.factor))
    need = ipc * m.factor**2
    idx = data.indices_of_class(c)
    if len(idx) < need:
        raise DDError(f"rded needs ipc * factor^2 = {need} real images of class '{data.class_names[c]}' but "
                      f"{data.name} holds {len(idx)}; lower ipc or method.factor")
    gen = seeds.generator("rded", seed, c)
    chosen = idx[torch.randperm(len(idx), generator=gen)[: max(need, min(int(m.mipc), len(idx)))]]
    x = to_device(data.train_x[chosen], device)
    crops = torch.stack([crop_to(x, to_device(square_crops(len(x), gen, (m.scale_min, m.scale_max)), device), tile)
                         for _ in range(m.num_crop)])  # (num_crop, n, C, h, w)
    logits = teacher.logits(pad_to(crops.flatten(0, 1), size)).reshape(m.num_crop, len(x), -1)
    ce = F.cross_entropy(logits.flatten(0, 1), torch.full((m.num_crop * len(x),), c, device=logits.device),
                         reduction="none").reshape(m.num_crop, len(x))
    best_ce, best = ce.min(0)
    best_crops = crops[best, torch.arange(len(x), device=crops.device)]
    order = torch.argsort(best_ce)[:need]
    return stitch(best_crops[order], ipc, m.factor, size)


@METHODS.register("rded", schema=RDEDConfig)
def run_rded(ctx: RunContext) -> SynSet:
    cfg, data = ctx.cfg, ctx.data
    check_config(cfg.method, cfg.ipc)
    t0 = time.perf_counter()
    teacher = get_teacher(cfg, data, ctx.device, ctx.progress)
    t1 = time.perf_counter()
    images = torch.cat([select_class(teacher, data, c, cfg.ipc, cfg.method, cfg.seed, ctx.device).cpu()
                        for c in tqdm(range(data.num_classes), desc="rded select", disable=not ctx.progress)])
    labels = torch.arange(data.num_classes).repeat_interleave(cfg.ipc)
    t2 = time.perf_counter()
    return relabelled_set(ctx, teacher, images, labels, timings={"teacher_s": t1 - t0, "select_s": t2 - t1})
