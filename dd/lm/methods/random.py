"""random: a uniformly random part of the training documents (the baseline every curve is read against).

`method=full` is the whole training split."""

import torch

from dd import seeds
from dd.lm.base import METHODS, LMRunContext, Selection


@METHODS.register("random")
def select(ctx: LMRunContext) -> Selection:
    n_keep = ctx.n_keep
    order = torch.randperm(len(ctx.ids["train"]), generator=seeds.generator("lm_select", ctx.cfg.seed))
    return Selection(order[:n_keep].tolist(), None)
