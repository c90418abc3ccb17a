"""What every method receives and returns."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dd.evaluate import EvalResult
from dd.tracking import Tracker


@dataclass
class RunContext:
    cfg: object  # the resolved DictConfig
    data: object  # ImageDataset (or a text dataset)
    device: torch.device
    out_dir: Path
    tracker: Tracker
    progress: bool = True


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
