"""Text baselines under the same protocol as the distilled sets.

- random_text: ipc real training examples per class (seeded), fed as their word embeddings
  with their own attention masks and hard labels, trained on for the same number of SGD
  steps as a distilled set. The one lr is picked on a grid by mean accuracy on a held-out
  part of the train split (never used as examples), then the set is evaluated on the test split.
- full_finetune: ordinary fine-tuning of pretrained body + fresh head on the whole train
  split with AdamW (linear warmup/decay, grad-norm clipping) for a few epochs; mean ± std
  over `num_runs` runs. The word-embedding table stays frozen, as in every text learner here.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dd import seeds
from dd.errors import DDError
from dd.evaluate_text import TextSet, batches, evaluate_text_set, score, summarise
from dd.methods.attention_labels import linear_schedule
from dd.methods.text_base import TextRunContext, TextSynSet, check_ipc, require_text


def random_examples(data, ipc: int, pool: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ipc indices per class from `pool`, class-interleaved (example j is of class j % classes)."""
    picks = []
    for c in range(data.num_classes):
        members = pool[data.train.labels[pool] == c]
        picks.append(members[torch.randperm(len(members), generator=gen)[:ipc]])
    return torch.stack(picks, dim=1).reshape(-1)


def run_random_text(ctx: TextRunContext) -> TextSynSet:
    require_text(ctx, "random_text")
    cfg, data, clf, device = ctx.cfg, ctx.data, ctx.classifier, ctx.device
    m = cfg.method
    for key in ("inner_steps", "batch_per_class", "grid_runs"):
        if m[key] <= 0:
            raise DDError(f"method.{key}={m[key]} is not allowed; it must be positive")
    if not m.lr_grid or any(not lr > 0 for lr in m.lr_grid):
        raise DDError(f"method.lr_grid={list(m.lr_grid)} is not allowed; give one or more positive lrs")
    if cfg.ipc % m.batch_per_class:
        raise DDError(f"method.batch_per_class={m.batch_per_class} must divide ipc={cfg.ipc}")
    n = len(data.train)
    if not 0 < m.holdout < n:
        raise DDError(f"method.holdout={m.holdout} is not allowed; it must be between 1 and {n - 1} (the train split has {n})")
    gen = seeds.generator("coreset_select", cfg.seed)
    perm = torch.randperm(n, generator=gen)
    held, pool = perm[: m.holdout], perm[m.holdout :]
    check_ipc(data, cfg.ipc, pool)
    idx = random_examples(data, cfg.ipc, pool, gen)
    real = data.train.subset(idx)

    def text_set(lr: float) -> TextSet:
        return TextSet(
            inputs_embeds=clf.embed(real.input_ids).to(device), attention_mask=real.attention_mask.to(device),
            token_type_ids=real.token_type_ids.to(device), targets=real.labels.to(device),
            lr=torch.full((m.inner_steps,), float(lr), dtype=clf.body0.dtype, device=device),
            num_classes=data.num_classes, batch_per_class=m.batch_per_class,
        )

    t0 = time.perf_counter()
    heldout = data.train.subset(held)
    grid = {}
    for lr in tqdm(list(m.lr_grid), desc="random_text lr grid", disable=not ctx.progress):
        try:
            result = evaluate_text_set(clf, text_set(lr), data, m.grid_runs, seed=cfg.seed, round=1, split=heldout,
                                       batch_size=cfg.eval.test_batch_size, progress=False)
            grid[float(lr)] = result.mean
        except DDError:  # this lr diverges: it is simply not chosen
            grid[float(lr)] = float("nan")
    finite = {lr: acc for lr, acc in grid.items() if np.isfinite(acc)}
    if not finite:
        raise DDError(f"every lr of method.lr_grid={list(m.lr_grid)} diverged; give smaller lrs")
    best = max(finite, key=finite.get)
    grid_s = time.perf_counter() - t0
    tset = text_set(best)
    evaluation = evaluate_text_set(clf, tset, data, cfg.eval.num_models, seed=cfg.seed,
                                   batch_size=cfg.eval.test_batch_size, progress=ctx.progress)
    return TextSynSet(
        tset=tset, evaluation=evaluation, label_type="hard", labels=real.labels.clone(),
        extra_meta={"train_indices": idx.tolist(), "texts": real.texts, "lr_grid": grid, "chosen_lr": best,
                    "holdout": m.holdout, "inner_steps": m.inner_steps, "batch_per_class": m.batch_per_class,
                    "label_type": "hard", "attention_labels": "none"},
        timings={"lr_grid_s": grid_s},
    )


def finetune(clf, data, m, seed: int, run: int, device, progress: bool) -> torch.Tensor:
    """Fine-tuning run `run` from the pretrained body and a fresh head; returns the weights."""
    theta = clf.new_theta(seeds.generator("finetune_head", seed, run)).requires_grad_(True)
    # AdamW on one flat vector is the same elementwise update as AdamW on every parameter tensor
    opt = torch.optim.AdamW([theta], lr=m.lr, weight_decay=m.weight_decay)
    per_epoch = -(-len(data.train) // m.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(m.epochs * per_epoch, m.warmup_ratio))
    gen = seeds.generator("finetune_data", seed, run)
    for epoch in tqdm(range(m.epochs), desc="fine-tune", leave=False, disable=not progress):
        order = torch.randperm(len(data.train), generator=gen)
        for ids, mask, types, labels in batches(data.train, m.batch_size, device, order=order):
            logits, _ = clf(theta, clf.embed(ids), mask, types)
            loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                raise DDError(f"fine-tuning diverged (loss {loss.item()}) in epoch {epoch}; lower method.lr={m.lr}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([theta], m.max_grad_norm)
            opt.step()
            sched.step()
    return theta.detach()


def run_full_finetune(ctx: TextRunContext) -> TextSynSet:
    require_text(ctx, "full_finetune")
    cfg, data, clf = ctx.cfg, ctx.data, ctx.classifier
    m = cfg.method
    for key in ("epochs", "batch_size", "lr", "num_runs", "max_grad_norm"):
        if not m[key] > 0:
            raise DDError(f"method.{key}={m[key]} is not allowed; it must be positive")
    if not 0 <= m.warmup_ratio < 1:
        raise DDError(f"method.warmup_ratio={m.warmup_ratio} is not allowed; it must be in [0, 1)")
    t0 = time.perf_counter()
    scores = []
    for k in tqdm(range(m.num_runs), desc="full_finetune", disable=not ctx.progress):
        theta = finetune(clf, data, m, cfg.seed, k, ctx.device, ctx.progress)
        scores.append(score(clf, theta, data.test, cfg.eval.test_batch_size))
    evaluation = summarise(scores, clf.backbone.name, time.perf_counter() - t0, None, data.f1)
    return TextSynSet(tset=None, evaluation=evaluation, export=False,
                      extra_meta={"epochs": m.epochs, "lr": m.lr, "batch_size": m.batch_size})
