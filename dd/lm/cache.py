"""Scores and probe models, cached under <cache_dir>/lm and keyed by everything they depend on.

A score file records the corpus (the training split's fingerprint), the tokeniser and the recipe
that made it; reusing one (prune.scores_file=...) from another corpus or recipe is refused, naming
the difference. Probe, reference and proxy models are cached the same way, so a sweep over keep
ratios and seeds trains each of them once.
"""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dd.errors import DDError
from dd.fsutil import write_file, write_json
from dd.lm.base import LMRunContext

SCORE_FORMAT = 1
RECIPE_VERSION = 1  # bump when the probe training changes: cached models and scores keyed by it are made anew


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_recipe(ctx: LMRunContext) -> dict:
    p = ctx.cfg.prune
    return {"model": OmegaConf.to_container(ctx.cfg.model, resolve=True), "tokenizer": ctx.tokenizer.id,
            "tokens": p.probe_tokens, "batch_size": p.batch_size, "lr": p.lr, "warmup": p.warmup,
            "min_lr_ratio": p.min_lr_ratio, "weight_decay": p.weight_decay, "grad_clip": p.grad_clip,
            "seed": p.probe_seed, "version": RECIPE_VERSION}


def provenance(ctx: LMRunContext, scorer: str, recipe: dict) -> dict:
    return {"format": SCORE_FORMAT, "scorer": scorer, "corpus": ctx.corpus.name,
            "corpus_fingerprint": ctx.corpus.fingerprint, "documents": len(ctx.corpus.docs["train"]),
            "recipe": recipe}


def check_provenance(found: dict, wanted: dict, path: Path) -> None:
    for key in ("format", "scorer", "corpus_fingerprint", "documents", "recipe"):
        if found.get(key) != wanted[key]:
            if key == "corpus_fingerprint":
                what = (f"it scores another corpus (its training split hashes to {str(found.get(key))[:12]}, "
                        f"this run's to {wanted[key][:12]})")
            else:
                what = (f"its {key} is {json.dumps(found.get(key), default=str)[:200]}, this run needs "
                        f"{json.dumps(wanted[key], default=str)[:200]}")
            raise DDError(f"prune.scores_file={path} does not fit this run: {what}")


def cached_scores(ctx: LMRunContext, scorer: str, recipe: dict, compute: Callable[[], np.ndarray],
                  length: int | None = -1) -> tuple[np.ndarray, Path]:
    """The scores of (corpus, scorer, recipe): read from prune.scores_file or the cache, else computed and cached.
    `length`: how many a file must hold (-1: one per training document; None: any)."""
    if length == -1:
        length = len(ctx.corpus.docs["train"])
    wanted = provenance(ctx, scorer, recipe)
    given = ctx.cfg.prune.scores_file
    path = Path(given).expanduser() if given else ctx.cache_dir / "scores" / f"{scorer}_{key_of(wanted)}.json"
    if path.exists():
        try:
            found = json.loads(path.read_text())
            scores = np.asarray(found["scores"], dtype=np.float64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise DDError(f"{path} is not a ddlab score file (JSON with provenance and scores); delete it or give another") from None
        check_provenance(found, wanted, path)
        if not np.isfinite(scores).all() or (length is not None and len(scores) != length):
            raise DDError(f"{path} holds {len(scores)} scores{'' if np.isfinite(scores).all() else ' (some not finite)'}; "
                          f"this run needs {length} finite ones; delete it or give another")
        return scores, path
    if given:
        raise DDError(f"prune.scores_file={given} does not exist")
    scores = np.asarray(compute(), dtype=np.float64)
    write_json(path, {**wanted, "scores": scores.tolist()})
    return scores, path


def cached_model(ctx: LMRunContext, role: str, recipe: dict, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The model `make` trains, cached under (role, corpus, tokeniser, recipe)."""
    from safetensors.torch import load_model, save_model

    from dd.lm.model import build_model

    key = key_of(role, ctx.corpus.fingerprint, model_recipe(ctx), recipe)
    path = ctx.cache_dir / "models" / f"{role}_{key}.safetensors"
    if path.exists():
        model = build_model(ctx.cfg.model, ctx.tokenizer.vocab_size, ctx.cfg.prune.probe_seed, purpose=f"lm_{role}")
        try:
            load_model(model, str(path))
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which and how to fix it
            raise DDError(f"{path} is not a usable cached {role} model ({str(e).splitlines()[0][:120]}); delete it") from None
        return model.to(ctx.device)
    model = make()
    write_file(path, lambda p: save_model(model, str(p)))  # save_model keeps GPT-2's tied embedding once
    return model
