"""Dataset Condensation with Differentiable Siamese Augmentation (DSA, Zhao & Bilen, ICML 2021).

Gradient matching (dd/image/methods/dc.py) with the same differentiable augmentation on the real
and the synthetic batch of each class in every matching step (one transform, with the same
parameters, for both whole batches), and per-image augmentation while the network trains on the
synthetic set. Only the defaults differ from DC: augmentation on, and the images start from real
ones, as the authors' command does.
"""

from dataclasses import dataclass

from dd.image.base import METHODS, SynSet
from dd.image.methods.dc import DCConfig, run_gradient_matching
from dd.registry import RunContext


@dataclass
class DSAConfig(DCConfig):
    """DC's settings with DSA's defaults."""

    name: str = "dsa"
    init: str = "real"
    dsa: bool = True


@METHODS.register("dsa", schema=DSAConfig)
def distill(ctx: RunContext) -> SynSet:
    return run_gradient_matching(ctx)
