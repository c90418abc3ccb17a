"""method=full: the whole training set, evaluated like any set (the upper reference row); nothing is exported."""

from dataclasses import dataclass

from dd.image.base import SynSet
from dd.registry import RunContext, register


@dataclass
class FullConfig:
    name: str = "full"


@register("full", kind="image", schema=FullConfig)
def run_full(ctx: RunContext) -> SynSet:
    return SynSet(ctx.data.train_x, ctx.data.train_y, export=False)
