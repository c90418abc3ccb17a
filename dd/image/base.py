"""The image methods' contract (their registry, what they return) and the learned images that the
pixel-space methods (DC, DSA, DM) optimise."""

from dataclasses import dataclass, field

import torch

from dd.image.evaluate import EvalResult
from dd.registry import Registry


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
    extra_tensors: dict = field(default_factory=dict)  # exported beside the images (stored soft labels)


@dataclass
class LearnedImages:
    """Images grouped by class (ipc each) learned by SGD with momentum; checkpointable."""

    images: torch.Tensor  # (classes * ipc, C, H, W) leaf
    labels: torch.Tensor  # (classes * ipc,)
    ipc: int
    opt: torch.optim.Optimizer

    @classmethod
    def create(cls, images: torch.Tensor, labels: torch.Tensor, ipc: int, lr: float,
               momentum: float) -> "LearnedImages":
        images = images.detach().clone().requires_grad_(True)
        return cls(images, labels, ipc, torch.optim.SGD([images], lr=lr, momentum=momentum))

    def of_class(self, c: int) -> torch.Tensor:
        return self.images[c * self.ipc : (c + 1) * self.ipc]

    def state_dict(self) -> dict:
        return {"images": self.images.detach(), "opt_img": self.opt.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        with torch.no_grad():
            self.images.copy_(saved["images"])
        self.opt.load_state_dict(saved["opt_img"])


METHODS = Registry("image", "dd.image.methods", returns=SynSet, contract="""Image methods.

Receives: a dd.registry.RunContext: the run's config (cfg.method is the method's schema), the loaded
ImageDataset, the device, the run folder, the tracker.
Returns: a SynSet: images in the space the models train in, labels (hard or soft), an optional learned lr;
`evaluation` when the method already evaluated this exact set (else the image kind evaluates it);
`export=False` for sets that are not small (method=full).
May write: its own checkpoints in ctx.out_dir (resume=true reads them back); the image kind writes the
exported set, the grid and results.json.""")
