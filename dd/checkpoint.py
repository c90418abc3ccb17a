"""Checkpoints of long distillation runs: what a resume must agree on, and saving and loading one safely."""

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dd import dist
from dd.errors import DDError
from dd.fsutil import write_file

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def run_digest(cfg) -> str:
    """Hash of the settings a checkpoint must share with the run that resumes it."""
    keys = {k: cfg[k] for k in ("dataset", "model", "method", "inner", "ipc", "seed")}
    text = json.dumps(OmegaConf.to_container(OmegaConf.create(keys), resolve=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def requeued() -> bool:
    """Whether this is a SLURM job started again after a requeue (preemption, `scontrol requeue`, or submitit
    at the time limit): SLURM counts the restarts in SLURM_RESTART_COUNT."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    except ValueError:
        return False


def should_resume(cfg, path: Path) -> bool:
    """resume=true, or a requeued SLURM job that finds its own checkpoint in its run folder: it carries on
    from there (and reaches the images an uninterrupted run reaches)."""
    if cfg.resume:
        return True
    if requeued() and Path(path).is_file():
        log.info("requeued SLURM job (restart %s): resuming from %s", os.environ.get("SLURM_RESTART_COUNT"), path)
        return True
    return False


def load_checkpoint(path: Path, digest: str) -> dict:
    """The checkpoint at `path` (tensors only, no code runs) on the CPU, refused if another config wrote it.

    It loads to the CPU whatever device wrote it or will use it: a generator's state must stay a CPU
    byte tensor (set_state refuses a CUDA one), `copy_` and the optimisers' load_state_dict put every
    other tensor on its parameter's device, and an optimiser's `step` counter stays where torch keeps it."""
    if not path.is_file():
        raise DDError(f"resume=true but {path} does not exist; point hydra.run.dir at the run folder to resume")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["digest"] != digest:
        raise DDError(f"{path} was written by a run with another dataset/model/method/ipc/seed config; "
                      "resume with the same settings or start a new run folder")
    return saved


def check_world_size(saved: int, path: Path) -> None:
    """A run resumes with the number of processes that wrote its checkpoint: sums over ranks are taken in
    another order with another count, so the resumed run would not be the uninterrupted one bit for bit."""
    if saved != dist.world():
        raise DDError(f"{path} was written by a job of {saved} process(es) but this one has {dist.world()}; "
                      f"resume with {saved} (torchrun --nproc-per-node {saved}) or start a new run folder")


@dataclass
class Checkpointer:
    """A distillation loop's checkpoint: the learned tensors with their optimisers (anything with
    state_dict/load_state_dict), the loop state (a dataclass) and, where the loop draws from one,
    its generator. Restoring all three makes a resumed run identical to an uninterrupted one."""

    path: Path
    digest: str

    def save(self, learned, state, next_it: int, gen: torch.Generator | None = None) -> None:
        state.next_it = next_it
        if not dist.is_main():  # every rank holds the same state: rank 0 of a job writes it
            return
        blob = {"digest": self.digest, **learned.state_dict(), "state": asdict(state), "world_size": dist.world()}
        if gen is not None:
            blob["gen_state"] = gen.get_state()
        write_file(self.path, lambda p: torch.save(blob, p))

    def restore(self, learned, state_type: type, gen: torch.Generator | None = None):
        """Loads the checkpoint into `learned` (and `gen`); returns the loop state."""
        saved = load_checkpoint(self.path, self.digest)
        check_world_size(saved.get("world_size", 1), self.path)
        learned.load_state_dict(saved)
        if gen is not None:
            gen.set_state(saved["gen_state"])
        state = state_type(**saved["state"])
        log.info("resumed from %s at iteration %d", self.path, state.next_it)
        return state
