"""Coreset baselines: choose `ipc` real training images per class, by a rule of dd.selection.

- random: a seeded, class-balanced random subset.
- herding: per class, herding on the images' embeddings (Welling 2009).
- kcenter: per class, k-center greedy on the images' embeddings.

herding and kcenter work on the penultimate-layer embedding (``model.embed``)
of one network of the run's model config trained on the full training set for
``method.feature_epochs`` epochs with the evaluation optimiser (no
augmentation).
"""

from dataclasses import dataclass

import torch
from omegaconf import MISSING
from tqdm.auto import tqdm

from dd import seeds
from dd.data import ImageDataset
from dd.errors import DDError
from dd.image.base import METHODS, SynSet
from dd.image.train import fresh_model, lr_schedule, train_on_set
from dd.registry import RunContext
from dd.selection import herding, kcenter_greedy, per_class, random_per_class


@dataclass
class CoresetConfig:
    """random / herding / kcenter: pick real images per class."""

    name: str = MISSING
    # herding and kcenter select on the embedding of a ConvNet trained on the full train set
    feature_epochs: int = 20
    feature_batch_size: int = 256


@METHODS.register("kcenter", schema=CoresetConfig)
@METHODS.register("herding", schema=CoresetConfig)
@METHODS.register("random", schema=CoresetConfig)
def run_coreset(ctx: RunContext) -> SynSet:
    cfg = ctx.cfg
    idx = select(cfg.method.name, ctx.data, cfg.ipc, seed=cfg.seed, model_cfg=cfg.model, method_cfg=cfg.method,
                 eval_cfg=cfg.eval, device=ctx.device, progress=ctx.progress)
    return SynSet(ctx.data.train_x[idx], ctx.data.train_y[idx], extra_meta={"train_indices": idx.tolist()})


def check_ipc(data: ImageDataset, ipc: int) -> None:
    if ipc <= 0:
        raise DDError(f"ipc={ipc} is not allowed; it must be a positive integer")
    counts = torch.bincount(data.train_y, minlength=data.num_classes)
    smallest = int(counts.min())
    if ipc > smallest:
        c = int(counts.argmin())
        raise DDError(
            f"ipc={ipc} is more than class '{data.class_names[c]}' of {data.name} holds ({smallest} images); "
            f"use ipc <= {smallest}"
        )


def random_indices(data: ImageDataset, ipc: int, seed: int) -> torch.Tensor:
    """Indices into data.train_x of ipc random images per class, grouped by class."""
    return torch.cat(random_per_class(data.train_y, data.num_classes, ipc, seeds.generator("coreset_select", seed)))


@torch.no_grad()
def embed_all(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model.embed(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def feature_network(data: ImageDataset, model_cfg, method_cfg, eval_cfg, seed: int, device, progress: bool):
    model = fresh_model(model_cfg, data, seeds.derive("coreset_features", seed, 0), device)
    train_on_set(
        model, data.train_x, data.train_y,
        schedule=lr_schedule(method_cfg.feature_epochs), lr=eval_cfg.lr, batch_size=method_cfg.feature_batch_size,
        momentum=eval_cfg.momentum, weight_decay=eval_cfg.weight_decay, dsa=None,
        generator=seeds.generator("coreset_features", seed, 1), progress=progress, desc="feature network",
    )
    return model


def select(
    rule: str, data: ImageDataset, ipc: int, *, seed: int, model_cfg, method_cfg, eval_cfg, device, progress=True
) -> torch.Tensor:
    """Indices into data.train_x of the chosen images, grouped by class."""
    check_ipc(data, ipc)
    if rule == "random":
        return random_indices(data, ipc, seed)
    pick = {"herding": herding, "kcenter": kcenter_greedy}.get(rule)
    if pick is None:
        raise DDError(f"coreset rule '{rule}' is unknown; choose one of: random, herding, kcenter")
    features = embed_all(feature_network(data, model_cfg, method_cfg, eval_cfg, seed, device, progress), data.train_x)
    classes = tqdm(range(data.num_classes), desc=rule, leave=False, disable=not progress)
    return torch.cat(per_class(data.train_y, classes, lambda members: members[pick(features[members], ipc)]))
