"""Difficulty-aligned trajectory matching, DATM (Guo et al., ICLR 2024), on MTT's engine.

DATM is trajectory matching (dd.image.methods.mtt: the same outer iteration, meta-gradient engines,
selection rounds, checkpoints and export) with three changes, each plugged into MTT's shared loop:

- The start epoch s is drawn uniformly from [min_start_epoch, start_epoch_bound(it)), a bound that
  grows linearly from initial_max_start_epoch to max_start_epoch over window_iterations iterations:
  a small synthetic set matches the early (easy) part of the trajectories first.
- The set starts from real images that expert 0 (its last epoch) classifies correctly, and carries
  learned soft labels: each starts as the mean of the logits of the experts (last epoch) that classify
  that image correctly (`initial_soft_labels`), no temperature. The student trains on their softmax
  (soft cross-entropy at T = 1), and they are learned by their own SGD(lr_y, momentum_y).
- An iteration whose matching loss exceeds skip_loss_above updates nothing (images, lr, labels and
  their optimisers' momenta stay as they were).

The meta-gradient is ddlab's configured engine (`auto`: exact); the authors' code computes it with
the TESLA approximation, which `inner.engine=tesla` selects.
"""

import functools
import logging
from dataclasses import dataclass

import torch

from dd.errors import DDError
from dd.image.base import METHODS, SynSet
from dd.image.experts import Buffer
from dd.image.methods.coreset import check_ipc
from dd.image.methods.mtt import (
    Matching,
    MatchingConfig,
    Synthetic,
    check_matching,
    check_selection,
    match_trajectories,
)
from dd.models import FlatModel
from dd.registry import RunContext

log = logging.getLogger(__name__)


@dataclass
class DATMConfig(MatchingConfig):
    """DATM; defaults are the authors' CIFAR-10 IPC 10 settings (NUS-HPC-AI-Lab/DATM configs/CIFAR-10/ConvIN/IPC10.yaml;
    experiments/datm/published.yaml)."""

    name: str = "datm"
    iterations: int = 10000
    syn_steps: int = 80
    expert_epochs: int = 2
    min_start_epoch: int = 0
    # the bound of s at iteration 0; null = max_start_epoch from the start (a fixed window, as at IPC 1)
    initial_max_start_epoch: int | None = 10
    max_start_epoch: int = 20  # the final bound of s, reached after window_iterations iterations
    window_iterations: int = 1000  # iterations over which the bound grows from initial to final
    lr_img: float = 100.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01
    lr_y: float = 2.0  # SGD lr of the soft-label logits
    momentum_y: float = 0.9  # their SGD momentum (images and lr keep `momentum`, 0.5)
    skip_loss_above: float | None = 1.0  # skip the update when the matching loss exceeds this; null = never


def check_datm(m, inner, buffer_epochs: int) -> None:
    check_matching(m, inner, buffer_epochs, rates=("lr_lr", "lr_y"))
    initial = m.initial_max_start_epoch
    if initial is not None and not m.min_start_epoch < initial <= m.max_start_epoch:
        raise DDError(f"method.initial_max_start_epoch={initial} is not allowed; it must lie in "
                      f"(min_start_epoch, max_start_epoch] = ({m.min_start_epoch}, {m.max_start_epoch}], or be null")
    if m.window_iterations < 0 or (initial is not None and initial < m.max_start_epoch and m.window_iterations == 0):
        raise DDError(f"method.window_iterations={m.window_iterations} is not allowed; it must be positive when the "
                      "window grows (initial_max_start_epoch < max_start_epoch), and never negative")
    if not 0 <= m.momentum_y < 1:
        raise DDError(f"method.momentum_y={m.momentum_y} is not allowed; it must lie in [0, 1)")
    if m.skip_loss_above is not None and not m.skip_loss_above > 0:
        raise DDError(f"method.skip_loss_above={m.skip_loss_above} is not allowed; give a positive loss or null (never skip)")


def start_epoch_bound(m, it: int) -> int:
    """The exclusive upper bound of the start epoch at iteration `it`: initial + floor((final - initial) * it /
    window_iterations), capped at the final max_start_epoch (the authors' Sequential_Generation)."""
    initial = m.max_start_epoch if m.initial_max_start_epoch is None else m.initial_max_start_epoch
    if initial >= m.max_start_epoch:
        return m.max_start_epoch
    return min(m.max_start_epoch, initial + (m.max_start_epoch - initial) * it // m.window_iterations)


class ExpertPredictions:
    """Each expert's class predictions (at one epoch) on the whole training split, computed when first asked for."""

    def __init__(self, data, student: FlatModel, buffer: Buffer, epoch: int, device, batch: int = 1024):
        self.data, self.student, self.buffer, self.epoch, self.device, self.batch = data, student, buffer, epoch, device, batch
        self._cache: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def right(self, expert: int) -> torch.Tensor:
        """(N_train,) bool: which training images the expert classifies correctly."""
        if expert not in self._cache:
            (theta,) = self.buffer.epochs(expert, self.epoch)
            theta = theta.to(self.device)
            x = self.data.train_x
            pred = torch.cat([self.student(theta, x[i : i + self.batch].to(self.device)).argmax(1).cpu()
                              for i in range(0, len(x), self.batch)])
            self._cache[expert] = pred == self.data.train_y
        return self._cache[expert]


def initial_correct_images(data, ipc: int, predictions: ExpertPredictions, experts: list[int],
                           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc real images per class, grouped by class, that expert experts[0] classifies correctly, in a random
    order. A class where it gets fewer than ipc right is filled with images the next experts get right (as the
    authors' code does); a class that no expert gets ipc right is refused."""
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    picks = []
    for c in range(data.num_classes):
        idx = data.indices_of_class(c)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        chosen: list[int] = []
        for e in experts:
            chosen += [i for i in idx[predictions.right(e)[idx]].tolist() if i not in chosen][: ipc - len(chosen)]
            if len(chosen) == ipc:
                break
        if len(chosen) < ipc:
            raise DDError(f"class {c} of {data.name}: the experts classify only {len(chosen)} of its training images "
                          f"correctly, fewer than ipc={ipc}; train the experts longer (buffer.epochs) or lower ipc")
        picks.append(torch.tensor(chosen))
    return data.train_x[torch.cat(picks)].clone(), labels


@torch.no_grad()
def initial_soft_labels(images: torch.Tensor, labels: torch.Tensor, student: FlatModel, buffer: Buffer,
                        experts: list[int], epoch: int) -> torch.Tensor:
    """(N, classes) logits: for each image, the mean of the logits of the experts (at `epoch`) whose prediction
    is its class; experts that get it wrong do not count. An image no expert gets right is refused."""
    total, count = None, torch.zeros(len(labels), device=images.device)
    for e in experts:
        (theta,) = buffer.epochs(e, epoch)
        logits = student(theta.to(images.device), images)
        right = (logits.argmax(1) == labels).to(logits.dtype)
        total = logits * right[:, None] if total is None else total + logits * right[:, None]
        count += right
    if (count == 0).any():
        raise DDError(f"{int((count == 0).sum())} initial images are classified correctly by none of the "
                      f"{len(experts)} experts; their soft labels are undefined")
    return total / count[:, None]


def initial_synthetic(ctx: RunContext, buffer: Buffer, experts: list[int], student: FlatModel,
                      gen: torch.Generator) -> Synthetic:
    cfg, m, last = ctx.cfg, ctx.cfg.method, ctx.cfg.buffer.epochs
    predictions = ExpertPredictions(ctx.data, student, buffer, last, ctx.device)
    images, labels = initial_correct_images(ctx.data, cfg.ipc, predictions, experts, gen)
    images, labels = images.to(ctx.device), labels.to(ctx.device)
    logits = initial_soft_labels(images, labels, student, buffer, experts, last)
    return Synthetic.create(images, labels, m.lr_teacher, m, logits, label_lr=m.lr_y, label_momentum=m.momentum_y)


@METHODS.register("datm", schema=DATMConfig)
def distill(ctx: RunContext) -> SynSet:
    m = ctx.cfg.method
    check_ipc(ctx.data, ctx.cfg.ipc)
    check_datm(m, ctx.cfg.inner, ctx.cfg.buffer.epochs)
    check_selection(ctx.cfg)
    return match_trajectories(ctx, Matching(initial_synthetic, functools.partial(start_epoch_bound, m),
                                            m.skip_loss_above))
