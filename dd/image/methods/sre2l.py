"""SRe2L (Yin et al., NeurIPS 2023): squeeze, recover, relabel.

Squeeze: a teacher with BatchNorm trained on the full set (dd.image.teachers). Recover: synthetic
images start from N(0, 1) noise and are optimised so that the teacher (in eval mode) classifies them
as their target class while the mean and variance of every BatchNorm layer's input on the batch match
that layer's running statistics:

    loss = CE(teacher(jitter(x)), y) + r_bn * sum_l m_l * (||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2)

with m_0 = first_bn_multiplier and m_l = 1 after it. As the authors' CIFAR code: one batch per image
index holding one image of every class, Adam (betas 0.5, 0.9) with a cosine lr from `lr` to 0 over
`iterations`, a random circular shift (jitter) of 0..jitter pixels on both axes each step (and a random
flip with method.flip), the pixels clipped to [0, 1] after each step. Each finished batch is checkpointed
(resume=true, or a requeued SLURM job, carries on). Relabel: the teacher's soft labels on every
evaluation epoch's crops, stored with the set (dd.image.relabel).
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from tqdm.auto import tqdm

from dd import dist, seeds
from dd.checkpoint import CHECKPOINT, load_checkpoint, run_digest, should_resume
from dd.errors import DDError
from dd.fsutil import write_file
from dd.image.base import METHODS, SynSet
from dd.image.relabel import relabelled_set
from dd.image.teachers import get_teacher
from dd.registry import RunContext


@dataclass
class SRe2LConfig:
    """Recover images from a BatchNorm teacher's statistics, then relabel (SRe2L)."""

    name: str = MISSING
    iterations: int = 1000  # per batch (the authors' default)
    lr: float = 0.1  # Adam on the images; the authors' CIFAR default (ImageNet: 0.25)
    r_bn: float = 0.05  # weight of the BatchNorm-statistics loss (CIFAR default; ImageNet: 0.01)
    first_bn_multiplier: float = 10.0
    jitter: int = 4  # circular shift of 0..jitter pixels per axis each step (CIFAR: 4; ImageNet: 32)
    flip: bool = False  # a random horizontal flip each step (the CIFAR recipe has none)


class BNStatistics:
    """Forward hooks on the teacher's BatchNorm layers: each call records ||mu - running_mean|| +
    ||var - running_var|| of the layer's input on the current batch (var biased, as BatchNorm uses)."""

    def __init__(self, model: torch.nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise DDError("sre2l needs a teacher with BatchNorm layers; set teacher.model.norm=batch "
                          "(or teacher.model=resnet18)")
        self.losses: list[torch.Tensor] = [torch.zeros(())] * len(self.layers)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i: int):
        def record(module, inputs, output):
            x = inputs[0]
            dims = [0, *range(2, x.dim())]
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            self.losses[i] = torch.norm(module.running_mean - mean, 2) + torch.norm(module.running_var - var, 2)
        return record

    def loss(self, first_multiplier: float) -> torch.Tensor:
        return first_multiplier * self.losses[0] + sum(self.losses[1:], torch.zeros_like(self.losses[0]))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def check_config(m, ipc: int) -> None:
    if m.iterations <= 0:
        raise DDError(f"method.iterations={m.iterations} is not allowed; it must be a positive integer")
    if not (m.lr > 0 and math.isfinite(m.lr)):
        raise DDError(f"method.lr={m.lr} is not allowed; it must be a positive finite number")
    if m.r_bn < 0 or m.jitter < 0:
        raise DDError(f"method.r_bn={m.r_bn}, method.jitter={m.jitter}: both must be >= 0")


def recover(teacher, data, ipc: int, m, seed: int, device, progress: bool = True,
            checkpoint: "Checkpoint | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (ipc * classes, C, H, W) class-major, labels): batch j holds image j of every class.
    Batches are independent (batch j draws only from ("sre2l", seed, j)): `checkpoint` keeps the finished
    ones, and a resumed run recovers only the rest, reaching the images an uninterrupted run reaches."""
    classes = data.num_classes
    targets = torch.arange(classes, device=device)
    stats = BNStatistics(teacher.model)
    lo, hi = (data.from_pixels(torch.full((1, data.channels, *data.image_size), v)).to(device) for v in (0.0, 1.0))
    batches = [] if checkpoint is None else checkpoint.load()
    try:
        for j in tqdm(range(len(batches), ipc), desc="sre2l recover", disable=not progress, initial=len(batches),
                      total=ipc):
            gen = seeds.generator("sre2l", seed, j)
            x = torch.randn(classes, data.channels, *data.image_size, generator=gen).to(device).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=m.lr, betas=(0.5, 0.9), eps=1e-8)
            for it in range(m.iterations):
                for group in opt.param_groups:  # cosine from lr to 0, no warm-up (the authors' policy)
                    group["lr"] = 0.5 * (1 + math.cos(math.pi * it / m.iterations)) * m.lr
                dy, dx, f = torch.randint(0, m.jitter + 1, (2,), generator=gen).tolist() + [
                    bool(m.flip and torch.rand((), generator=gen) < 0.5)]
                xj = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                if f:
                    xj = xj.flip(3)
                loss = F.cross_entropy(teacher.model(xj), targets) + m.r_bn * stats.loss(m.first_bn_multiplier)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():  # keep pixels in [0, 1] (the bounds, in model space, of black and white)
                    x.copy_(clip(x, lo, hi, data))
            batches.append(x.detach())
            if checkpoint is not None:
                checkpoint.save(batches)
    finally:
        stats.remove()
    images = torch.stack(batches, 1).reshape(classes * ipc, data.channels, *data.image_size)  # class-major
    return images.cpu(), torch.arange(classes).repeat_interleave(ipc)


@dataclass
class Checkpoint:
    """The recovered batches so far, in the run folder (dd.checkpoint: refused if another config wrote it)."""

    path: Path
    digest: str
    resume: bool

    def load(self) -> list[torch.Tensor]:
        if not self.resume:
            return []
        return list(load_checkpoint(self.path, self.digest)["batches"])

    def save(self, batches: list[torch.Tensor]) -> None:
        blob = {"digest": self.digest, "batches": torch.stack([b.cpu() for b in batches])}
        write_file(self.path, lambda p: torch.save(blob, p))


def clip(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, data) -> torch.Tensor:
    if data.zca is None:  # per channel, the model-space values of pixel 0 and 1
        return torch.maximum(torch.minimum(x, hi), lo)
    return data.from_pixels(data.to_pixels(x.cpu()).clamp(0, 1)).to(x.device)


@METHODS.register("sre2l", schema=SRe2LConfig)
def run_sre2l(ctx: RunContext) -> SynSet:
    cfg = ctx.cfg
    check_config(cfg.method, cfg.ipc)
    t0 = time.perf_counter()
    teacher = get_teacher(cfg, ctx.data, ctx.device, ctx.progress)
    t1 = time.perf_counter()
    path = ctx.out_dir / CHECKPOINT
    ckpt = Checkpoint(path, run_digest(cfg), should_resume(cfg, path)) if dist.is_main() else None
    images, labels = recover(teacher, ctx.data, cfg.ipc, cfg.method, cfg.seed, ctx.device, ctx.progress, ckpt)
    t2 = time.perf_counter()
    return relabelled_set(ctx, teacher, images, labels, timings={"teacher_s": t1 - t0, "recover_s": t2 - t1})
