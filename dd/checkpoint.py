"""Checkpoints of long distillation runs: what a resume must agree on, and loading one safely."""

import hashlib
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dd.errors import DDError

CHECKPOINT = "checkpoint.pt"


def run_digest(cfg) -> str:
    """Hash of the settings a checkpoint must share with the run that resumes it."""
    keys = {k: cfg[k] for k in ("dataset", "model", "method", "inner", "ipc", "seed")}
    text = json.dumps(OmegaConf.to_container(OmegaConf.create(keys), resolve=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_checkpoint(path: Path, digest: str, device) -> dict:
    """The checkpoint at `path` (tensors only, no code runs), refused if another config wrote it."""
    if not path.is_file():
        raise DDError(f"resume=true but {path} does not exist; point hydra.run.dir at the run folder to resume")
    saved = torch.load(path, map_location=device, weights_only=True)
    if saved["digest"] != digest:
        raise DDError(f"{path} was written by a run with another dataset/model/method/ipc/seed config; "
                      "resume with the same settings or start a new run folder")
    return saved
