"""What an image method returns (every method receives a dd.registry.RunContext)."""

from dataclasses import dataclass, field

import torch

from dd.image.evaluate import EvalResult


@dataclass
class SynSet:
    images: torch.Tensor  # in the space the models train in
    labels: torch.Tensor  # (N,) int64 or (N, classes) float
    lr: torch.Tensor | None = None  # learned lr (scalar or per step), else the evaluator's default
    evaluation: EvalResult | None = None  # set when the method already evaluated this exact set
    export: bool = True  # False for method=full (the whole training set)
    last: "SynSet | None" = None  # methods that keep a best set also hand back their final state
    extra_meta: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
