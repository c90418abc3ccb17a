"""Run a function in a job of several processes on this machine (gloo, CPU), as torchrun would start it.

`run_ranks(fn, world, *args)` starts `world` fresh processes with torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), each joins the process group through dd.dist.init,
calls fn(*args) and hands back what it returned; the list comes back in rank order. A failure on any
rank fails the call with that rank's traceback. `fn` must be importable (a module-level function).
"""

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DD_DEVICE="cpu", OMP_NUM_THREADS="1",
                      DD_DIST_TIMEOUT_S=os.environ.get("DD_DIST_TIMEOUT_S", "120"))
    torch.set_num_threads(1)
    from dd import dist

    assert dist.init("cpu")
    try:
        result = fn(*args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.shutdown()


def run_ranks(fn, world: int, *args) -> list:
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank_main, args=(world, free_port(), out, fn, args), nprocs=world, join=True,
                           start_method="spawn")
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world)]
