"""perplexity_band: keep the low, middle or high band of a small reference model's perplexity
(Marion et al. 2023; Ankner et al. 2024). Those papers score data the reference model did not train
on; to score every training document that way, the split is cut in two random halves and each half is
scored by a reference trained on the other (cross-fitting: two reference models, both cached)."""

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import MISSING

from dd import seeds
from dd.errors import DDError
from dd.lm.base import METHODS, LMRunContext, Selection, top
from dd.lm.cache import cached_scores, model_recipe
from dd.lm.probe import mean_nll, probe_model

BANDS = ("low", "middle", "high")


@dataclass
class BandConfig:
    name: str = MISSING
    band: str = "middle"  # low | middle | high


def band_of(perplexity: np.ndarray, n_keep: int, band: str) -> list[int]:
    if band == "low":
        return top(perplexity, n_keep, highest=False)
    if band == "high":
        return top(perplexity, n_keep, highest=True)
    order = top(perplexity, len(perplexity), highest=False)
    start = (len(order) - n_keep) // 2  # the middle n_keep of the ranking
    return order[start: start + n_keep]


@METHODS.register("perplexity_band", schema=BandConfig)
def select(ctx: LMRunContext) -> Selection:
    n_keep = ctx.n_keep
    m = ctx.cfg.method
    if m.band not in BANDS:
        raise DDError(f"method.band={m.band} is unknown; choose one of: {', '.join(BANDS)}")
    n = len(ctx.ids["train"])
    if n < 2:
        raise DDError(f"method=perplexity_band needs at least 2 training documents; dataset={ctx.corpus.name} has {n}")
    order = torch.randperm(n, generator=seeds.generator("lm_reference_halves", ctx.cfg.prune.probe_seed)).tolist()
    halves = [sorted(order[: n // 2]), sorted(order[n // 2:])]

    def cross_fitted() -> np.ndarray:
        nll = np.empty(n)
        for h in (0, 1):  # the reference trained on one half scores the other
            scored = halves[1 - h]
            nll[scored] = mean_nll(ctx, probe_model(ctx, f"reference{h}", halves[h]), scored)
        return nll

    nll, path = cached_scores(ctx, "reference_nll", {"probe": model_recipe(ctx), "fit": "2 halves, crossed"}, cross_fitted)
    perplexity = np.exp(nll)
    return Selection(band_of(perplexity, n_keep, m.band), perplexity, "reference perplexity",
                     {"score_file": str(path), "band": m.band})
