"""Several processes in one job: ranks, the world size and the few collectives ddlab needs.

A job is distributed when its launcher says so in the environment: `torchrun` sets RANK,
WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT); SLURM's `srun` with several tasks sets
SLURM_PROCID, SLURM_STEP_NUM_TASKS and SLURM_LOCALID, and `init` takes the rendezvous address from
MASTER_ADDR/MASTER_PORT or, failing that, the first host of SLURM_JOB_NODELIST and a port
derived from the job id. A one-process run never touches torch.distributed: every helper
below is then the identity (or trivial), so callers need no `if distributed:`.

Backend: gloo on CPU, nccl on CUDA. Collectives time out after DD_DIST_TIMEOUT_S seconds
(default 1800), so when one rank dies the others stop with an error instead of waiting for ever
(torchrun also tears the job down when a worker fails).

Data-parallel meta-gradients use the pair `replicated_to_local` / `local_to_replicated`: a
parameter vector every rank holds (the student's theta) enters rank-local work through the
first (identity forward, gradients summed over ranks backward), and a rank-local partial
result (its share of a gradient) becomes the replicated total through the second (a sum over
ranks forward, identity backward, because every rank then holds the same adjoint). Each is
the other's backward, so the pair stays exact under double backward: an unrolled or reverse
meta-gradient taken on every rank equals the one-process meta-gradient.
"""

import datetime
import os
import re

import torch
import torch.distributed as dist

from dd.errors import DDError

TIMEOUT_ENV = "DD_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0  # long enough for ranks that train unequal shares (one model more than another)


def _int_env(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise DDError(f"{name}={value!r} is not an integer (set by the launcher?)") from None
    return None


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) as the launcher set them; (0, 1, 0) for a plain process.

    torchrun's variables win over SLURM's (torchrun inside an allocation sets its own)."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return _int_env("RANK"), _int_env("WORLD_SIZE"), _int_env("LOCAL_RANK") or 0
    world = _int_env("SLURM_STEP_NUM_TASKS")  # set inside an srun step only (a batch script is one process)
    if world is not None and world > 1:
        return _int_env("SLURM_PROCID") or 0, world, _int_env("SLURM_LOCALID") or 0
    return 0, 1, 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else launched()[0]


def world() -> int:
    return dist.get_world_size() if is_initialized() else launched()[1]


def local_rank() -> int:
    return launched()[2]


def is_main() -> bool:
    """Whether this process writes results, checkpoints, exports and logs (rank 0; every plain process)."""
    return rank() == 0


def timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise DDError(f"{TIMEOUT_ENV}={raw!r} is not allowed; give a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def _slurm_rendezvous() -> None:
    """MASTER_ADDR/PORT for a job started by srun alone: the job's first host, a port from the job id."""
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "localhost"
        first = re.split(r",(?![^\[]*\])", nodes)[0]
        if "[" in first:  # node[3-5,7] -> node3
            prefix, ranges = first.split("[", 1)
            first = prefix + re.split(r"[-,\]]", ranges)[0]
        os.environ["MASTER_ADDR"] = first
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(20000 + (_int_env("SLURM_JOB_ID") or 0) % 20000)


def init(device: torch.device | str = "cpu") -> bool:
    """Join the job's process group if the launcher started several processes; returns whether distributed.

    Idempotent. gloo for CPU runs, nccl for CUDA ones (each rank on cuda:LOCAL_RANK)."""
    r, w, _ = launched()
    if w <= 1:
        return False
    if is_initialized():
        return True
    if not dist.is_available():
        raise DDError(f"this job has {w} processes but this torch build has no torch.distributed")
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "RANK" not in os.environ:  # started by srun: torch reads the rendezvous from the environment
        _slurm_rendezvous()
        os.environ.setdefault("RANK", str(r))
        os.environ.setdefault("WORLD_SIZE", str(w))
    kwargs = {}
    if backend == "nccl" and device.index is not None:
        torch.cuda.set_device(device)  # object collectives (gather, broadcast) stage through the current GPU
        kwargs["device_id"] = device
    dist.init_process_group(backend=backend, rank=r, world_size=w, timeout=timeout(), **kwargs)
    return True


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def share(n: int, r: int | None = None, w: int | None = None) -> slice:
    """Rank r's contiguous share of n items: sizes differ by at most one, earlier ranks take the extra ones."""
    r = rank() if r is None else r
    w = world() if w is None else w
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def require_share(n: int, what: str, why: str) -> None:
    """Refuse a job with more processes than `n` things to deal out (a rank would have nothing to do)."""
    if world() > n:
        raise DDError(f"{n} {what} cannot be shared over {world()} processes ({why}); run at most {n} processes")


def strided(items: list, r: int | None = None, w: int | None = None) -> list:
    """Rank r's items of a list dealt round-robin (item k goes to rank k % w)."""
    r = rank() if r is None else r
    w = world() if w is None else w
    return list(items[r::w])


def all_sum_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over ranks, in place (one collective for all of them); the identity in one process."""
    if world() > 1 and tensors:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))
    return tensors


def all_min(value: int) -> int:
    """The smallest of an integer over ranks (ranks must agree on how a computation is cut up)."""
    if world() <= 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def gather(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if world() <= 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, src: int = 0):
    """Rank src's `obj` on every rank."""
    if world() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def _collective_device() -> torch.device:
    backend = dist.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


class _ReplicatedToLocal(torch.autograd.Function):
    """Forward: the identity. Backward: the gradient summed over ranks (each rank holds a part of it)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _LocalToReplicated.apply(grad)


class _LocalToReplicated(torch.autograd.Function):
    """Forward: the sum over ranks. Backward: the identity (every rank holds the same, replicated, adjoint)."""

    @staticmethod
    def forward(ctx, x):
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        return _ReplicatedToLocal.apply(grad)


def replicated_to_local(x: torch.Tensor) -> torch.Tensor:
    """`x` (the same on every rank) as the input of rank-local work; see the module docstring."""
    return _ReplicatedToLocal.apply(x) if world() > 1 else x


def local_to_replicated(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a rank-local `x`, differentiable; see the module docstring."""
    return _LocalToReplicated.apply(x) if world() > 1 else x
