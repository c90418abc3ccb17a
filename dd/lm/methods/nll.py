"""nll: sample importance by information (Kim & Baek 2024). A probe LM trained on the whole training
split scores each document by its NLL per token; the least informative (lowest NLL) are pruned first.

`method.iwf=true` is the paper's later version: the score adds the document's average inverse word
frequency surprisal, the mean over its words of -log(word count / all words) in the training split
(a unigram model's surprisal), weighted by `method.iwf_weight`.
"""

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from omegaconf import MISSING

from dd.lm.base import METHODS, LMRunContext, Selection, top
from dd.lm.cache import cached_scores, model_recipe
from dd.lm.probe import mean_nll, probe_model

WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class NLLConfig:
    name: str = MISSING
    iwf: bool = False  # add the average inverse word frequency surprisal (the paper's later version)
    iwf_weight: float = 1.0


def iwf_surprisal(docs: list[str]) -> np.ndarray:
    """Mean over each document's words of -log(relative frequency in `docs`); 0 for a document without words."""
    words = [WORD.findall(d.lower()) for d in docs]
    counts = Counter(w for ws in words for w in ws)
    total = sum(counts.values())
    return np.array([np.mean([math.log(total / counts[w]) for w in ws]) if ws else 0.0 for ws in words])


@METHODS.register("nll", schema=NLLConfig)
def select(ctx: LMRunContext) -> Selection:
    n_keep = ctx.n_keep
    everyone = list(range(len(ctx.ids["train"])))
    recipe = {"probe": model_recipe(ctx)}
    scores, path = cached_scores(ctx, "nll", recipe, lambda: mean_nll(ctx, probe_model(ctx, "probe", everyone)))
    info = {"score_file": str(path)}
    if ctx.cfg.method.iwf:
        scores = scores + ctx.cfg.method.iwf_weight * iwf_surprisal(ctx.corpus.docs["train"])
        info["iwf_weight"] = ctx.cfg.method.iwf_weight
    return Selection(top(scores, n_keep, highest=True), scores, "nll" + ("+iwf" if ctx.cfg.method.iwf else ""), info)
