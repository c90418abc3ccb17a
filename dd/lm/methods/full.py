"""full: every training document (the full-data reference of a pruning curve, whatever prune.keep says)."""

from dd.lm.base import METHODS, LMRunContext, Selection


@METHODS.register("full")
def select(ctx: LMRunContext) -> Selection:
    return Selection(list(range(len(ctx.ids["train"]))), None, "", {"note": "method=full keeps every document"})
