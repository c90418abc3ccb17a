"""Training one network on a set: its model (`new_model`, or `fresh_model` from an init seed), optimiser and lr
schedule, the loss against hard labels, label distributions or a `LabelSource`'s per-batch soft targets, and
`train_on_set`. The evaluation protocol (dd.image.evaluate), the experts, the teachers and the coreset feature
network all train with this kit.
"""

import math
import threading
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dd.data import DSA, ImageDataset
from dd.device import to_device
from dd.errors import DDError
from dd.models import build_model
from dd.precision import to_layout
from dd.workers import Stopped

SCHEDULES = ("step", "reference", "cosine")
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class Schedule:
    """When the lr drops: epochs after index `decay_after` train at lr x0.1; or, cosine, it
    follows half a cosine from base to 0 over the epochs (torch's CosineAnnealingLR stepped per epoch)."""

    epochs: int  # epochs trained in all
    decay_after: int
    restart: bool  # a new optimiser at the drop, so momentum starts again from zero
    cosine: bool = False

    def lr(self, base: float, epoch: int) -> float:
        if self.cosine:
            return base * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        return base * 0.1 if epoch > self.decay_after else base

    def restarts_at(self, epoch: int) -> bool:
        return self.restart and epoch == self.decay_after + 1


def lr_schedule(epochs: int, kind: str = "step") -> Schedule:
    """`step`: E epochs, lr x0.1 from epoch E//2, momentum kept (ddlab's default).
    `reference`: what the reference code's evaluate_synset runs for epoch_eval_train=E: E+1 epochs,
    lr x0.1 after the epoch with index E//2+1, and a new SGD optimiser then.
    `cosine`: E epochs, lr annealed from base to 0 (SRe2L's and RDED's students)."""
    if kind == "cosine":
        return Schedule(epochs, epochs, restart=False, cosine=True)
    if kind == "reference":
        return Schedule(epochs + 1, epochs // 2 + 1, restart=True)
    if kind == "step":
        return Schedule(epochs, epochs // 2 - 1, restart=False)
    raise DDError(f"eval.schedule '{kind}' is unknown; choose one of: {', '.join(SCHEDULES)}")


def model_options(model_cfg) -> tuple[str, dict]:
    """Split a model config into its name and the options that are set."""
    cfg = dict(model_cfg)
    name = cfg.pop("name")
    cfg.pop("kind", None)  # which kind of run the model serves, not a constructor option
    return name, {k: v for k, v in cfg.items() if v is not None}


def new_model(model_cfg, data: ImageDataset) -> torch.nn.Module:
    name, options = model_options(model_cfg)
    return build_model(name, data.channels, data.num_classes, data.image_size, **options)


@dataclass(frozen=True)
class ModelSeeds:
    init: int  # the model's initial weights
    data: int  # its data order and augmentation draws


def fresh_model(model_cfg, data, init_seed: int, device) -> torch.nn.Module:
    torch.manual_seed(init_seed)  # module initialisers draw from the global generator
    return new_model(model_cfg, data).to(device, non_blocking=True)  # CUDA stages it: no wait


def set_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard labels (N,) or label distributions (N, classes)."""
    if labels.dim() == 2:
        return torch.sum(-labels * F.log_softmax(logits, dim=1), dim=1).mean()
    return F.cross_entropy(logits, labels)


def distill_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(target || softmax(logits / T)), averaged over the batch: the teacher-based papers' student loss
    (the target is the teacher's softmax at the same T)."""
    return F.kl_div(F.log_softmax(logits / temperature, dim=1), target, reduction="batchmean")


class LabelSource(Protocol):
    """Each training batch's inputs and targets, in place of DSA and the set's labels."""

    name: str  # stored | teacher
    temperature: float

    def batch(self, x: torch.Tensor, idx: torch.Tensor, epoch: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented x, target distributions at `temperature`) for images `idx` of the set at `epoch`."""
        ...

    def prepare(self, epochs: int, n: int, device) -> "LabelSource":
        """The source on `device`, checked to cover `epochs` epochs of an `n`-image set (one per model)."""
        ...


def make_optimizer(kind: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise DDError(f"eval.optimizer '{kind}' is unknown; choose one of: {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """The fraction of (x, y) the model gets right; counted on the model's device, one transfer at the end."""
    device = next(model.parameters()).device
    model.eval()
    y = to_device(y, device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(x), batch_size):
        logits = model(to_device(x[i : i + batch_size], device))
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    return int(correct) / len(x)


@torch.no_grad()
def probabilities(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """softmax(model(x)) (temperature 1) in eval mode, on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([F.softmax(model(x[i : i + batch_size].to(device)), dim=1).cpu()
                      for i in range(0, len(x), batch_size)])


def train_on_set(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    schedule: Schedule,
    lr: float,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    dsa: DSA | None = None,
    generator: torch.Generator,
    progress: bool = False,
    desc: str = "train",
    stop: threading.Event | None = None,
    check_every: int = 1,
    channels_last: bool = False,
    optimizer: str = "sgd",
    labels_from: LabelSource | None = None,
) -> None:
    """Train `model` in place; `generator` (CPU) drives data order and augmentation draws.
    `labels_from`: each batch's augmentation and soft targets come from it (KL loss at its temperature;
    DSA and `labels` unused); `optimizer`: sgd (momentum) or adamw.
    `stop` (dd.workers): checked every epoch; once set, training ends with dd.workers.Stopped.
    The loss is checked for NaN/inf on the device and read by the host once every `check_every` epochs (and
    after the last), so no step waits for the GPU; a diverged run raises then."""
    device = next(model.parameters()).device
    images, labels = to_device(images.detach(), device), to_device(labels.detach(), device)

    def new_optimizer(step_lr):
        return make_optimizer(optimizer, model.parameters(), step_lr, momentum, weight_decay)

    opt = new_optimizer(lr)
    n = len(images)
    model.train()
    diverged = torch.zeros((), dtype=torch.bool, device=device)
    for epoch in tqdm(range(schedule.epochs), desc=desc, leave=False, disable=not progress):
        if stop is not None and stop.is_set():
            raise Stopped
        if schedule.restarts_at(epoch):
            opt = new_optimizer(schedule.lr(lr, epoch))
        for group in opt.param_groups:
            group["lr"] = schedule.lr(lr, epoch)
        order = to_device(torch.randperm(n, generator=generator), device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx]
            if labels_from is not None:
                x, target = labels_from.batch(x, idx, epoch, generator)
                loss = distill_loss(model(to_layout(x, channels_last)), target, labels_from.temperature)
            else:
                if dsa is not None:
                    x = dsa(x, seed=int(torch.randint(2**31 - 1, (1,), generator=generator)))
                loss = set_loss(model(to_layout(x, channels_last)), labels[idx])
            diverged |= ~torch.isfinite(loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if ((epoch + 1) % check_every == 0 or epoch == schedule.epochs - 1) and bool(diverged):
            raise DDError(f"training diverged (loss {float(loss.detach())}) by epoch {epoch} with lr={lr}; use a smaller lr")
