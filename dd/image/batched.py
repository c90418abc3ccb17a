"""Training many small networks at once: one vmapped computation over stacked parameters.

A ConvNet on 32x32 images leaves a GPU mostly idle, so the evaluator's K models and
dd-buffer's experts are trained together: parameters of K same-architecture models
are stacked (torch.func.stack_module_state) and one vmapped step computes every
model's gradient. Each model keeps its own init, data order and augmentation
draws, taken from its own generator in exactly the order sequential training takes
them, so a batched model follows the same trajectory as a sequential one up to
float rounding.

On CPU a vmapped stack only wins when one model's step is so small that per-call overhead
dominates (`faster_batched`); otherwise the evaluator trains the models side by side on the
cores (dd.workers). Models with BatchNorm running statistics cannot be batched this way (their
buffers change in place); callers fall back to one model at a time for them.
"""

import copy
import logging

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from dd.device import to_device
from dd.errors import DDError

log = logging.getLogger(__name__)


class ModelStack:
    """K models of one architecture as stacked parameter tensors (leading dim K)."""

    def __init__(self, models: list[torch.nn.Module]):
        self.params, self.buffers = stack_module_state(models)
        self.params = {k: v.detach() for k, v in self.params.items()}
        # a stateless copy to call with stacked weights
        self.base = copy.deepcopy(models[0]).to("meta")
        self.names = [n for n, _ in models[0].named_parameters()]
        self.k = len(models)

    def forward(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def flat(self, i: int) -> torch.Tensor:
        """Model i's parameters as one flat vector (FlatModel's order)."""
        return torch.cat([self.params[n][i].reshape(-1) for n in self.names])

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> list[float]:
        """Each model's accuracy on the same (x, y), counted on the device (one transfer at the end)."""
        logits_fn = vmap(self.forward, in_dims=(0, 0, None))
        x, y = to_device(x, self.device), to_device(y, self.device)
        correct = torch.zeros(self.k, dtype=torch.long, device=self.device)
        for i in range(0, len(x), batch_size):
            logits = logits_fn(self.params, self.buffers, x[i : i + batch_size])
            correct += (logits.argmax(-1) == y[i : i + batch_size]).sum(1)
        return [c / len(x) for c in correct.tolist()]  # exact fractions, as the sequential accuracy

    @torch.no_grad()
    def probabilities(self, xs: list[torch.Tensor], batch_size: int = 1024) -> list[torch.Tensor]:
        """Model i's class probabilities (softmax, temperature 1) on its own inputs xs[i], on the CPU."""
        if len(xs) != self.k:
            raise ValueError(f"need one input batch per model ({self.k}), got {len(xs)}")
        x = to_device(torch.stack(list(xs)), self.device)  # (K, M, C, H, W)
        logits_fn = vmap(self.forward, in_dims=(0, 0, 0))
        probs = torch.cat([torch.softmax(logits_fn(self.params, self.buffers, x[:, i : i + batch_size]), dim=-1).cpu()
                           for i in range(0, x.shape[1], batch_size)], dim=1)
        return list(probs)


def train_stack(
    stack: ModelStack,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    schedule,
    lr: float,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    dsa,
    generators: list[torch.Generator],
    loss_fn,
    on_epoch=None,
    progress: bool = False,
    desc: str = "train",
    per_model: bool = False,
) -> None:
    """SGD (torch.optim.SGD's update rule) on every stacked model at once, in place.

    images (N, C, H, W) and labels (N,) or (N, classes) are one set all models train on; with
    per_model, images (K, N, C, H, W) and labels (K, N[, classes]) hold model k's own set at index k.

    schedule: a dd.image.train.Schedule (epochs, when the lr drops, whether momentum restarts then);
    experts use one that never drops.
    on_epoch(epoch, stack) is called after each epoch (experts record their parameters there).
    """
    if len(generators) != stack.k:
        raise ValueError(f"need one generator per model ({stack.k}), got {len(generators)}")
    device = images.device

    def step_loss(params, buffers, x, y):
        return loss_fn(stack.forward(params, buffers, x), y)

    grads_and_losses = vmap(grad_and_value(step_loss))
    velocity = {k: torch.zeros_like(v) for k, v in stack.params.items()}
    if per_model and (len(images) != stack.k or len(labels) != stack.k):
        raise ValueError(f"per_model: need one set per model ({stack.k}), got {len(images)} image and {len(labels)} label sets")
    n = images.shape[1] if per_model else len(images)
    rows = torch.arange(stack.k, device=device).unsqueeze(1)  # (K, 1): model k reads its own set
    diverged = torch.zeros(stack.k, dtype=torch.bool, device=device)
    for epoch in tqdm(range(schedule.epochs), desc=desc, leave=False, disable=not progress):
        step_lr = schedule.lr(lr, epoch)
        if schedule.restarts_at(epoch):
            velocity = {k: torch.zeros_like(v) for k, v in stack.params.items()}
        # every model's order drawn from its own generator, moved in one copy: (K, n)
        orders = to_device(torch.stack([torch.randperm(n, generator=g) for g in generators]), device)
        for start in range(0, n, batch_size):
            idx = orders[:, start : start + batch_size]  # (K, b)
            x, y = (images[rows, idx], labels[rows, idx]) if per_model else (images[idx], labels[idx])
            if dsa is not None:
                x = dsa.stacked(x, [int(torch.randint(2**31 - 1, (1,), generator=g)) for g in generators])
            grads, losses = grads_and_losses(stack.params, stack.buffers, x, y)
            diverged |= ~torch.isfinite(losses)
            with torch.no_grad():
                for name, p in stack.params.items():
                    g = grads[name]
                    if weight_decay:
                        g = g + weight_decay * p
                    if momentum:
                        g = velocity[name].mul_(momentum).add_(g)
                    p.sub_(step_lr * g)
        if on_epoch is not None:
            on_epoch(epoch, stack)
        if bool(diverged.any()):  # the host reads one flag per epoch, never per step
            bad = int(diverged.nonzero()[0])
            raise DDError(f"training diverged (model {bad} of the batch: loss {float(losses[bad])}) by epoch "
                          f"{epoch} with lr={lr}; use a smaller lr")


def step_bytes(stack: ModelStack, x: torch.Tensor, y: torch.Tensor, loss_fn) -> int:
    """Device bytes one training step of the stack's models on batch (x, y) holds: the activations autograd
    keeps (measured while the graph is alive, so twice that covers their gradients) plus each model's
    parameters, gradients and momentum."""
    device = stack.device
    before = torch.cuda.memory_allocated(device)
    params = {k: v.detach().requires_grad_(True) for k, v in stack.params.items()}
    with torch.enable_grad():
        loss = vmap(lambda p, b: loss_fn(stack.forward(p, b, x), y))(params, stack.buffers).sum()
        held = torch.cuda.memory_allocated(device) - before
    del loss
    weights = sum(v.numel() * v.element_size() for v in stack.params.values())
    return int(2 * held + 3 * weights)


def model_batch_size(requested: int | None, total: int, device: torch.device, probe=None) -> int:
    """How many models to train at once: the config's number, or on CUDA what free memory allows.

    probe(k) returns the device bytes one training step of k models holds (`step_bytes`); it reads no
    peak statistics, so it leaves a caller's torch.cuda.max_memory_allocated as it was.
    """
    if requested is not None:
        if requested <= 0:
            raise DDError(f"model batch size {requested} is not allowed; give a positive number or null (auto)")
        return min(requested, total)
    if device.type != "cuda" or probe is None:
        return total  # CPU: these models are small next to host memory
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # the allocator's cache
    per_model = max(1, probe(2) // 2)
    fit = int(0.7 * free // per_model)
    log.info("model batch: %d of %d fit in %.1f GiB free (%.0f MiB per model)", min(fit, total), total,
             free / 2**30, per_model / 2**20)
    return max(1, min(fit, total))


# The largest forward step (FLOPs of one model on one minibatch) that a vmapped stack trains faster than
# separate models on CPU. Measured on the 2-core machine (benchmarks/README.md, digits ConvNet width 32,
# K=20): 13.5 MFLOP (IPC 1) batched 2.0x faster than sequential; 27 MFLOP (IPC 2) batched 1.0x, the models
# side by side 1.5x; beyond that batched is slower (0.67x at IPC 5, 0.64x on CIFAR shape width 128 at IPC 1).
CPU_BATCHED_MAX_FLOPS = 20e6


def forward_flops(model: torch.nn.Module, image_shape, images: int) -> int:
    """FLOPs (convolutions and matrix products) of one forward pass of `images` images."""
    x = torch.zeros(1, *image_shape, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() * images


def faster_batched(model: torch.nn.Module, image_shape, step_images: int, device) -> bool:
    """Whether K copies of `model` train faster as one vmapped stack than apart, on minibatches of
    `step_images` images: always on CUDA; on CPU only for steps of at most CPU_BATCHED_MAX_FLOPS."""
    if torch.device(device).type == "cuda":
        return True
    return forward_flops(model, image_shape, step_images) <= CPU_BATCHED_MAX_FLOPS
