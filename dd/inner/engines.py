"""Meta-gradients of an outer loss through `num_steps` steps of SGD on a flat parameter vector.

The inner loop is theta_{i+1} = theta_i - lr_i * grad_theta step_loss(theta_i, learnables, i),
and the outer loss is outer(theta_N). Each engine returns d outer / d learnables and
d outer / d lr. The caller fixes every random choice of step i (minibatch, augmentation
seed) inside `step_loss`, so recomputing step i gives the same function every time.

- unroll:  autograd through the whole loop; memory grows with num_steps (the reference).
- auto:    exact within a memory budget (dd.inner.budget): the graphs of as many steps as fit,
           segments recomputed for the rest; `unroll` itself when every step fits.
- reverse: exact. A forward sweep keeps only theta_0..theta_N; a backward sweep rebuilds one
           step's graph at a time and pulls the adjoint a = dL/dtheta_{i+1} back through it:
             dL/dtheta_i  = a - lr_i * H_i a          (a Hessian-vector product)
             dL/dX       += -lr_i * (d g_i / dX)^T a
             dL/dlr_i     = -<g_i, a>
           so activation memory does not grow with num_steps. Nothing needs dL/dtheta_0, so
           step 0 skips its Hessian-vector product.
- tesla:   TESLA's approximation (Cui et al. 2023): the same sweep with a held at dL/dtheta_N,
           i.e. without the H_i a terms (paths from step i's batch to later parameters dropped).
- higher:  the unrolled loop through the `higher` library's differentiable optimisers, which
           also offer momentum and Adam inner optimisers.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from dd.errors import DDError
from dd.inner import budget

StepLoss = Callable[[torch.Tensor, Sequence[torch.Tensor], int], torch.Tensor]
OuterLoss = Callable[[torch.Tensor], torch.Tensor]

ENGINES = ("auto", "unroll", "reverse", "tesla", "higher")


@dataclass
class InnerConfig:
    engine: str = "auto"  # auto | unroll | reverse | tesla | higher
    # auto: the MB the kept inner-step graphs may take; null = half of the free device (or host) memory
    memory_budget_mb: float | None = None
    optimizer: str = "sgd"  # sgd | momentum | adam (momentum/adam need engine=higher)
    # CUDA only: TF32 in the meta-gradient (off: its second-order products stay float32; dd.precision)
    tf32: bool = False


@dataclass
class MetaGrad:
    loss: torch.Tensor  # outer loss, detached scalar
    grads: list[torch.Tensor]  # one per learnable, same shapes
    lr_grad: torch.Tensor  # same shape as lr
    theta: torch.Tensor  # theta_N, detached
    _host: tuple[bool, float] | None = field(default=None, init=False, repr=False)

    def host(self) -> tuple[bool, float]:
        """(every value finite, the loss) read by the host in one transfer, the only wait of an iteration."""
        if self._host is None:
            finite = torch.stack([torch.isfinite(self.loss).all(), torch.isfinite(self.lr_grad).all(),
                                  *(torch.isfinite(g).all() for g in self.grads)]).all()
            flag, loss = torch.stack([finite.to(self.loss.dtype), self.loss.reshape(())]).tolist()
            self._host = (bool(flag), loss)
        return self._host

    def is_finite(self) -> bool:
        """Loss and every gradient free of NaN/inf: only then may an update be applied."""
        return self.host()[0]

    def loss_value(self) -> float:
        return self.host()[1]


def _lr_at(lr: torch.Tensor, i: int) -> torch.Tensor:
    """A scalar lr is shared by every step; a vector holds one lr per step."""
    return lr[i] if lr.dim() > 0 else lr


def _zeros_if_none(grads, like):
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


def unroll(step_loss: StepLoss, outer: OuterLoss, theta0, learnables, lr, num_steps) -> MetaGrad:
    theta = theta0.detach().requires_grad_(True)
    for i in range(num_steps):
        (g,) = torch.autograd.grad(step_loss(theta, learnables, i), theta, create_graph=True)
        theta = theta - _lr_at(lr, i) * g
    loss = outer(theta)
    *grads, lr_grad = torch.autograd.grad(loss, [*learnables, lr], allow_unused=True)
    grads = _zeros_if_none(grads, learnables)
    return MetaGrad(loss.detach(), grads, torch.zeros_like(lr) if lr_grad is None else lr_grad, theta.detach())


def _forward_sweep(step_loss, theta0, learnables, lr, num_steps) -> list[torch.Tensor]:
    """theta_0..theta_N with no graph kept between steps."""
    fixed = [x.detach() for x in learnables]
    thetas = [theta0.detach()]
    for i in range(num_steps):
        theta = thetas[-1].requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(step_loss(theta, fixed, i), theta)
        thetas[-1] = theta.detach()
        thetas.append((theta - _lr_at(lr, i).detach() * g).detach())
    return thetas


def _sweep_back(step_loss, outer, theta0, learnables, lr, num_steps, exact: bool) -> MetaGrad:
    thetas = _forward_sweep(step_loss, theta0, learnables, lr, num_steps)
    theta_n = thetas[-1].requires_grad_(True)
    loss = outer(theta_n)
    (adj,) = torch.autograd.grad(loss, theta_n)
    grads = [torch.zeros_like(x) for x in learnables]
    lr_grad = torch.zeros_like(lr)
    lr_value = lr.detach()
    for i in reversed(range(num_steps)):
        theta = thetas[i].requires_grad_(True)
        leaves = [x.detach().requires_grad_(True) for x in learnables]
        (g,) = torch.autograd.grad(step_loss(theta, leaves, i), theta, create_graph=True)
        dot = torch.sum(g * adj)  # <g_i, a>: its gradient is the vector-Jacobian product we need
        carry = exact and i > 0  # the adjoint of theta_0 is never used: skip that Hessian-vector product
        wrt = [theta, *leaves] if carry else leaves
        parts = _zeros_if_none(torch.autograd.grad(dot, wrt, allow_unused=True), wrt)
        lr_i = _lr_at(lr_value, i)
        if carry:
            hvp, parts = parts[0], parts[1:]
        for acc, p in zip(grads, parts):
            acc.sub_(lr_i * p)
        if lr.dim() > 0:
            lr_grad[i] -= dot.detach()
        else:
            lr_grad -= dot.detach()
        if carry:
            adj = adj - lr_i * hvp
        thetas[i] = None  # this step is done; free it
    return MetaGrad(loss.detach(), grads, lr_grad, theta_n.detach())


def reverse(step_loss, outer, theta0, learnables, lr, num_steps) -> MetaGrad:
    return _sweep_back(step_loss, outer, theta0, learnables, lr, num_steps, exact=True)


def tesla(step_loss, outer, theta0, learnables, lr, num_steps) -> MetaGrad:
    return _sweep_back(step_loss, outer, theta0, learnables, lr, num_steps, exact=False)


def through_higher(step_loss, outer, theta0, learnables, lr, num_steps, optimizer: str = "sgd",
                   momentum: float = 0.9) -> MetaGrad:
    import higher

    holder = torch.nn.Parameter(theta0.detach().clone())
    if optimizer == "sgd":
        base = torch.optim.SGD([holder], lr=1.0)
    elif optimizer == "momentum":
        base = torch.optim.SGD([holder], lr=1.0, momentum=momentum)
    elif optimizer == "adam":
        base = torch.optim.Adam([holder], lr=1.0)
    else:
        raise DDError(f"inner.optimizer '{optimizer}' is unknown; choose one of: sgd, momentum, adam")
    diffopt = higher.optim.get_diff_optim(base, [holder], track_higher_grads=True)
    params = [theta0.detach().requires_grad_(True)]
    for i in range(num_steps):
        loss_i = step_loss(params[0], learnables, i)
        params = diffopt.step(loss_i, params=params, override={"lr": [_lr_at(lr, i)]})
    loss = outer(params[0])
    *grads, lr_grad = torch.autograd.grad(loss, [*learnables, lr], allow_unused=True)
    grads = _zeros_if_none(grads, learnables)
    return MetaGrad(loss.detach(), grads, torch.zeros_like(lr) if lr_grad is None else lr_grad, params[0].detach())


def meta_gradient(engine: str, step_loss: StepLoss, outer: OuterLoss, theta0: torch.Tensor,
                  learnables: Sequence[torch.Tensor], lr: torch.Tensor, num_steps: int,
                  optimizer: str = "sgd", memory_budget_mb: float | None = None) -> MetaGrad:
    """Gradients of outer(theta_N) w.r.t. `learnables` and `lr` (a scalar, or one lr per step).

    memory_budget_mb: for engine=auto, the memory the kept graphs may take (None: half of what is free)."""
    if num_steps <= 0:
        raise DDError(f"syn_steps={num_steps} is not allowed; it must be a positive integer")
    if lr.dim() > 0 and lr.numel() != num_steps:
        raise DDError(f"got {lr.numel()} per-step lrs for {num_steps} inner steps; give one lr or one per step")
    if memory_budget_mb is not None and not memory_budget_mb > 0:
        raise DDError(f"inner.memory_budget_mb={memory_budget_mb} is not allowed; give a positive number of MB or null")
    if optimizer != "sgd" and engine != "higher":
        raise DDError(f"inner.optimizer={optimizer} needs inner.engine=higher (the other engines do plain SGD)")
    learnables = list(learnables)
    if engine == "auto":
        fit = budget.steps_that_fit(step_loss, theta0, learnables, lr, memory_budget_mb)
        if fit >= num_steps:
            return unroll(step_loss, outer, theta0, learnables, lr, num_steps)
        return MetaGrad(*budget.segmented(step_loss, outer, theta0, learnables, lr, num_steps, fit))
    if engine == "unroll":
        return unroll(step_loss, outer, theta0, learnables, lr, num_steps)
    if engine == "reverse":
        return reverse(step_loss, outer, theta0, learnables, lr, num_steps)
    if engine == "tesla":
        return tesla(step_loss, outer, theta0, learnables, lr, num_steps)
    if engine == "higher":
        return through_higher(step_loss, outer, theta0, learnables, lr, num_steps, optimizer=optimizer)
    raise DDError(f"inner.engine '{engine}' is unknown; choose one of: {', '.join(ENGINES)}")
