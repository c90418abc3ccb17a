"""method=full: the whole training set, evaluated like any set (the upper reference row); nothing is exported."""

from dataclasses import dataclass

from dd.image.base import METHODS, SynSet
from dd.registry import RunContext


@dataclass
class FullConfig:
    name: str = "full"


@METHODS.register("full", schema=FullConfig)
def run_full(ctx: RunContext) -> SynSet:
    return SynSet(ctx.data.train_x, ctx.data.train_y, export=False)
