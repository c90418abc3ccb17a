"""random: a uniformly random part of the training documents (the baseline every curve is read against).

`method=random prune.keep=1.0` is the full training split."""

import torch

from dd import seeds
from dd.lm.base import LMRunContext, Selection
from dd.registry import register


@register("random", kind="lm")
def select(ctx: LMRunContext, n_keep: int) -> Selection:
    order = torch.randperm(len(ctx.ids["train"]), generator=seeds.generator("lm_select", ctx.cfg.seed))
    return Selection(order[:n_keep].tolist(), None)
