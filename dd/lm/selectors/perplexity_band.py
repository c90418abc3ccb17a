"""perplexity_band: keep the low, middle or high band of a small reference model's perplexity
(Marion et al. 2023; Ankner et al. 2024). The reference model is trained on a random part of the
training split (`method.reference_fraction`), as those papers train it apart from what it scores."""

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import MISSING

from dd import seeds
from dd.errors import DDError
from dd.lm.base import LMRunContext, Selection, top
from dd.lm.cache import cached_scores, model_recipe
from dd.lm.probe import mean_nll, probe_model
from dd.registry import register

BANDS = ("low", "middle", "high")


@dataclass
class BandConfig:
    name: str = MISSING
    band: str = "middle"  # low | middle | high
    reference_fraction: float = 0.5


def band_of(perplexity: np.ndarray, n_keep: int, band: str) -> list[int]:
    if band == "low":
        return top(perplexity, n_keep, highest=False)
    if band == "high":
        return top(perplexity, n_keep, highest=True)
    order = top(perplexity, len(perplexity), highest=False)
    start = (len(order) - n_keep) // 2  # the middle n_keep of the ranking
    return order[start: start + n_keep]


@register("perplexity_band", kind="lm", schema=BandConfig)
def select(ctx: LMRunContext, n_keep: int) -> Selection:
    m = ctx.cfg.method
    if m.band not in BANDS:
        raise DDError(f"method.band={m.band} is unknown; choose one of: {', '.join(BANDS)}")
    if not 0 < m.reference_fraction <= 1:
        raise DDError(f"method.reference_fraction={m.reference_fraction} is not allowed; it must be in (0, 1]")
    n = len(ctx.ids["train"])
    part = torch.randperm(n, generator=seeds.generator("lm_reference_subset", ctx.cfg.prune.probe_seed))
    part = sorted(part[: max(1, round(m.reference_fraction * n))].tolist())
    recipe = {"probe": model_recipe(ctx), "reference_fraction": m.reference_fraction}
    nll, path = cached_scores(ctx, "reference_nll", recipe, lambda: mean_nll(ctx, probe_model(ctx, "reference", part)))
    perplexity = np.exp(nll)
    return Selection(band_of(perplexity, n_keep, m.band), perplexity, "reference perplexity",
                     {"score_file": str(path), "band": m.band})
