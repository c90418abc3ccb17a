"""Probe models: small causal LMs trained on (part of) the corpus whose losses score documents.

The seed paper's "data probe" is trained on the whole training split; a perplexity band's reference
model on a random part of it; DoReMi's reference and proxy models on a domain mixture. Each is
trained for prune.probe_tokens tokens with the main model's recipe and cached (dd.lm.cache).
"""

import hashlib

import numpy as np
import torch

from dd import seeds
from dd.lm.base import LMRunContext
from dd.lm.cache import cached_model
from dd.lm.model import build_model, doc_nll, train, windows


def steps_for(tokens: int, ctx: LMRunContext) -> int:
    return max(1, tokens // (ctx.cfg.prune.batch_size * ctx.cfg.model.context))


def probe_model(ctx: LMRunContext, role: str, docs: list[int], recipe: dict | None = None) -> torch.nn.Module:
    """A model trained on training documents `docs` (natural proportions), cached by role and subset."""
    p, m = ctx.cfg.prune, ctx.cfg.model

    def make():
        model = build_model(m, ctx.tokenizer.vocab_size, p.probe_seed, purpose=f"lm_{role}")
        gen = seeds.generator(f"lm_{role}_data", p.probe_seed)
        stream = windows([ctx.ids["train"][i] for i in docs], ctx.tokenizer.eot, p.batch_size, m.context, gen)
        train(model, stream, steps_for(p.probe_tokens, ctx), p, ctx.device, desc=role, progress=ctx.progress)
        return model

    subset = "all" if len(docs) == len(ctx.ids["train"]) else hashlib.sha256(str(docs).encode()).hexdigest()[:16]
    return cached_model(ctx, role, {"docs": len(docs), "subset": subset, **(recipe or {})}, make)


def mean_nll(ctx: LMRunContext, model: torch.nn.Module, docs: list[int] | None = None) -> np.ndarray:
    """NLL per token (nats) of training documents `docs` (all by default): the seed paper's length-normalised
    information."""
    ids = ctx.ids["train"] if docs is None else [ctx.ids["train"][i] for i in docs]
    nll, count = doc_nll(model, ids, ctx.tokenizer.eot, ctx.cfg.model.context,
                         ctx.cfg.prune.eval_batch_size, ctx.device, progress=ctx.progress, desc="score")
    return (nll / count).numpy()
