"""The budgeted exact engine (`auto`): keep as many inner steps' graphs as a memory budget holds.

The unrolled loop is cut into segments of k steps, k = how many steps' graphs fit in the
budget. A forward sweep without graphs keeps only each segment's starting parameters; the
last segment is then rebuilt with its graph, the outer loss is backpropagated through it in
one call, and the adjoint at its start is carried back through the earlier segments, each
rebuilt and backpropagated the same way (checkpointing at segment boundaries). The gradient
is exactly `unroll`'s; activation memory is that of k steps whatever syn_steps is, and when
every step fits (k >= syn_steps) the engine simply is `unroll`.

The size of one step's graph is measured once per problem shape, by summing the distinct
storages autograd saves while one step is recorded with create_graph (the tensors an unrolled
loop keeps alive per step).
"""

import logging
from collections.abc import Sequence

import torch

from dd import dist, hostmem

log = logging.getLogger(__name__)

# Without a budget: this fraction of the memory free on the device (host memory on CPU).
FREE_FRACTION = 0.5
_step_bytes: dict[tuple, int] = {}


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # plus what torch's caching allocator holds unused: free to this process, though not to the driver
        # (the CPU branch counts the heap that dd.hostmem keeps the same way)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    # plus what this process keeps free for reuse (dd.hostmem): the same budget every iteration
                    return int(line.split()[1]) * 1024 + hostmem.free_in_heap()
    except OSError:
        pass
    return 4 * 2**30  # unknown host: assume a modest machine


def budget_bytes(memory_budget_mb: float | None, device: torch.device) -> int:
    if memory_budget_mb is None:
        return int(FREE_FRACTION * free_bytes(device))
    return int(memory_budget_mb * 2**20)


def graph_bytes_of_step(step_loss, theta0: torch.Tensor, learnables: Sequence[torch.Tensor], lr: torch.Tensor) -> int:
    """Bytes autograd keeps for one inner step recorded with create_graph (distinct storages)."""
    key = (theta0.device, theta0.dtype, theta0.numel(), tuple(tuple(x.shape) for x in learnables))
    if key in _step_bytes:
        return _step_bytes[key]
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    theta = theta0.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        (g,) = torch.autograd.grad(step_loss(theta, learnables, 0), theta, create_graph=True)
        _ = theta - _lr_at(lr, 0) * g
    _step_bytes[key] = max(1, sum(seen.values()))
    return _step_bytes[key]


def _lr_at(lr: torch.Tensor, i: int) -> torch.Tensor:
    return lr[i] if lr.dim() > 0 else lr


def steps_that_fit(step_loss, theta0, learnables, lr, memory_budget_mb: float | None) -> int:
    per_step = graph_bytes_of_step(step_loss, theta0, learnables, lr)
    # ranks of a data-parallel job must cut the loop the same way (their collectives pair up): the smallest
    return dist.all_min(max(1, budget_bytes(memory_budget_mb, theta0.device) // per_step))


def segmented(step_loss, outer, theta0, learnables, lr, num_steps: int, k: int):
    """Exact meta-gradient with at most k steps' graphs alive; returns (loss, grads, lr_grad, theta_N)."""
    fixed = [x.detach() for x in learnables]
    # segments counted back from the end: the last one, run with its graph straight away, is a full k
    # steps and only the first may be short, so num_steps - k steps are recomputed, not all but a remainder
    starts = sorted({max(0, end - k) for end in range(num_steps, 0, -k)})
    ends = dict(zip(starts, starts[1:] + [num_steps]))
    boundary = {}  # segment start index -> theta at that step (no graph)
    theta = theta0.detach()
    for i in range(num_steps):
        if i in starts:
            boundary[i] = theta
        if i >= starts[-1]:
            break  # the last segment is run with its graph below
        theta = theta.requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(step_loss(theta, fixed, i), theta)
        theta = (theta - _lr_at(lr, i).detach() * g).detach()

    grads = [torch.zeros_like(x) for x in learnables]
    lr_grad = torch.zeros_like(lr)
    adj, loss, theta_n = None, None, None
    for s in reversed(starts):
        end = ends[s]
        start = boundary.pop(s).requires_grad_(True)
        theta = start
        for i in range(s, end):
            (g,) = torch.autograd.grad(step_loss(theta, learnables, i), theta, create_graph=True)
            theta = theta - _lr_at(lr, i) * g
        if adj is None:  # the last segment: the outer loss starts the adjoint
            loss = outer(theta)
            theta_n = theta.detach()
            out, grad_out = loss, None
        else:
            out, grad_out = theta, adj
        wrt = [*learnables, lr] + ([start] if s > 0 else [])  # theta_0's adjoint is never needed
        parts = torch.autograd.grad(out, wrt, grad_outputs=grad_out, allow_unused=True)
        for acc, p in zip([*grads, lr_grad], parts[: len(learnables) + 1]):
            if p is not None:
                acc.add_(p)
        adj = parts[-1] if s > 0 else None
    return loss.detach(), grads, lr_grad, theta_n
