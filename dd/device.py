"""Choosing the compute device from the `device` config key."""

import torch

from dd.errors import DDError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DDError(f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto")
        return torch.device(name)
    raise DDError(f"device '{name}' is unknown; choose one of: auto, cpu, cuda, cuda:N")
