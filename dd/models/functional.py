"""Run a module as a pure function of one flat parameter vector.

Distillation inner loops unroll many SGD steps on a network and then
differentiate through them; keeping all weights in a single 1-D tensor makes
each step one tensor op and keeps the autograd graph intact (no in-place
parameter updates).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call


class FlatModel:
    """Runs `module` as a pure function of ONE flat parameter vector."""

    def __init__(self, module: nn.Module):
        self.module = module
        named = list(module.named_parameters())
        self.names: list[str] = [n for n, _ in named]
        self.shapes: list[torch.Size] = [p.shape for _, p in named]
        self.numels: list[int] = [p.numel() for _, p in named]
        self.numel: int = sum(self.numels)

    def flatten(self, params: dict[str, Tensor] | None = None) -> Tensor:
        """Concatenate parameters into a 1-D vector.

        With `params` given the result stays on their autograd graph; by default
        it is a detached copy of the module's current weights, ready to be used
        as a fresh leaf (e.g. `.requires_grad_()`).
        """
        if params is None:
            with torch.no_grad():
                current = dict(self.module.named_parameters())
                return torch.cat([current[n].reshape(-1) for n in self.names])
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split `flat` into named views shaped like the module's parameters."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(f"expected a 1-D vector of {self.numel} elements, got shape {tuple(flat.shape)}")
        pieces = torch.split(flat, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes)}

    def __call__(self, flat: Tensor, x: Tensor) -> Tensor:
        # Buffers (BatchNorm running stats) are taken from the module itself.
        return functional_call(self.module, self.unflatten(flat), (x,))

    def load_into(self, flat: Tensor) -> None:
        """Copy `flat` into the module's own parameters."""
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in self.unflatten(flat.detach()).items():
                params[name].copy_(value)
