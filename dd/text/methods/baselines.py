"""Text baselines under the same protocol as the distilled sets.

- random: ipc real training examples per class (seeded), fed as their word embeddings
  with their own attention masks and hard labels, trained on for the same number of SGD
  steps as a distilled set. The one lr is picked on a grid by mean macro-F1 on a held-out part of
  the train split (never used as examples; macro-F1, because on imbalanced data accuracy rewards
  an lr whose learners all predict the majority class), then the set is evaluated on the test split.
- loss_prune: real examples chosen by a data-pruning score (after Kim & Baek 2024): the backbone
  fine-tuned on the pool (the train split less the held-out part) scores every pool example by
  the NLL of its label; per class, the top `skip_noisy` fraction (default 10%: the examples the
  scorer contradicts most, likely label noise) is skipped and the ipc highest-NLL examples left
  (the least redundant, most informative end) are kept. Then trained on as random.
- herding: per class, herding on the pretrained backbone's final [CLS] states of the pool
  (the examples whose running mean tracks the class mean), then trained on as random.
- full: ordinary fine-tuning of pretrained body + fresh head on the whole train
  split with AdamW (linear warmup/decay, grad-norm clipping) for a few epochs; mean ± std
  over `num_runs` runs. The word-embedding table stays frozen, as in every text learner here.

On a GPU a fine-tuning step never waits for the device (divergence is checked once per epoch), the
real examples reach the device once per run, and scores and features come back in one copy each.
Fine-tuning and the learners run in the `eval.tf32` / `eval.autocast` precision (dd.precision).
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from dd import seeds
from dd.device import to_device
from dd.errors import DDError, require_positive
from dd.precision import phase
from dd.selection import herding, per_class, random_per_class
from dd.text.base import METHODS, TextRunContext, TextSynSet, check_ipc
from dd.text.evaluate import HEADS, TextSet, batches, evaluate_text_set, score, summarise
from dd.text.methods.attention_labels import linear_schedule


@dataclass
class RandomTextConfig:
    """Real examples per class, trained on like a distilled set; lr picked on a held-out train part."""

    name: str = "random"
    inner_steps: int = 1
    batch_per_class: int = 1
    lr_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    holdout: int = 200  # training examples held out to pick the lr (never selected as examples)
    grid_runs: int = 3  # training runs per grid point
    # the learners' head: random (the protocol every set is scored under, as the reference) | zero (a
    # diagnostic: one step from a zero head is a nearest-class-mean classifier, untouched by head noise)
    head: str = "random"


@dataclass
class FullFinetuneConfig:
    """Ordinary fine-tuning on the whole train split (AdamW, linear warmup/decay).

    The recipe for a small BERT on a few hundred to a few thousand labelled texts: 5 epochs at lr 1e-4
    (with 3 epochs at 5e-5, a few dozen steps, MiniLM mostly learns the class prior; measured in the README).
    """

    name: str = "full"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1.0e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    num_runs: int = 3  # fine-tuning runs (fresh heads); mean ± std over them


@dataclass
class LossPruneConfig(RandomTextConfig):
    """Per class, the highest label-NLL examples under a fine-tuned scorer, after skipping likely label noise."""

    name: str = "loss_prune"
    skip_noisy: float = 0.1  # per class, skip this top fraction by NLL (the scorer contradicts them most)
    # the scorer's fine-tuning recipe: full's, on a short budget (2 epochs)
    scorer: FullFinetuneConfig = field(default_factory=lambda: FullFinetuneConfig(epochs=2, num_runs=1))


@dataclass
class HerdingTextConfig(RandomTextConfig):
    """Per class, herding on the pretrained backbone's [CLS] embeddings."""

    name: str = "herding"


def eval_precision(cfg) -> dict:
    """The learners' and fine-tuning's precision on CUDA: eval.tf32, eval.autocast (dd.precision)."""
    return {"tf32": bool(cfg.eval.get("tf32", True)), "autocast": cfg.eval.get("autocast")}


def random_examples(data, ipc: int, pool: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ipc indices per class from `pool`, class-interleaved (example j is of class j % classes)."""
    picks = random_per_class(data.train.labels[pool], data.num_classes, ipc, gen)
    return torch.stack([pool[at] for at in picks], dim=1).reshape(-1)


def check_real_set(m, ipc: int, n: int) -> None:
    require_positive({key: m[key] for key in ("inner_steps", "batch_per_class", "grid_runs")})
    if not m.lr_grid or any(not lr > 0 for lr in m.lr_grid):
        raise DDError(f"method.lr_grid={list(m.lr_grid)} is not allowed; give one or more positive lrs")
    if ipc % m.batch_per_class:
        raise DDError(f"method.batch_per_class={m.batch_per_class} must divide ipc={ipc}")
    if m.head not in HEADS:
        raise DDError(f"method.head '{m.head}' is unknown; choose one of: {', '.join(HEADS)}")
    if not 0 < m.holdout < n:
        raise DDError(f"method.holdout={m.holdout} is not allowed; it must be between 1 and {n - 1} (the train split has {n})")


def holdout_split(data, m, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """(held-out indices, pool indices, the generator after the split): the same split for every real-set baseline."""
    gen = seeds.generator("coreset_select", seed)
    perm = torch.randperm(len(data.train), generator=gen)
    return perm[: m.holdout], perm[m.holdout :], gen


def per_class_picks(data, pool: torch.Tensor, ipc: int, rank) -> torch.Tensor:
    """ipc indices per class from `pool`, class-interleaved; rank(members) orders a class's pool indices."""
    picks = per_class(data.train.labels[pool], range(data.num_classes), lambda at: rank(pool[at])[:ipc])
    return torch.stack(picks, dim=1).reshape(-1)


def pick_lr(grid: dict[float, dict]) -> float:
    """The lr of the best held-out macro-F1 (ties: the smaller lr). Not accuracy: on imbalanced data it
    prefers an lr whose learners all predict the majority class."""
    finite = {lr: s["macro_f1"] for lr, s in grid.items() if np.isfinite(s["macro_f1"])}
    if not finite:
        raise DDError(f"every lr of method.lr_grid={sorted(grid)} diverged; give smaller lrs")
    return max(sorted(finite), key=finite.get)


def real_set(ctx: TextRunContext, name: str, idx: torch.Tensor, held: torch.Tensor, extra_meta: dict,
             timings: dict | None = None) -> TextSynSet:
    """Train on the real examples `idx` like on a distilled set: lr picked on the held-out part, then evaluated."""
    cfg, data, clf, device = ctx.cfg, ctx.data, ctx.classifier, ctx.device
    m = cfg.method
    real = data.train.subset(idx)
    precision = eval_precision(cfg)
    # the examples reach the device once; each lr of the grid is a new lr tensor only
    embeds, mask, types, targets = (clf.embed(real.input_ids).to(device), to_device(real.attention_mask, device),
                                    to_device(real.token_type_ids, device), to_device(real.labels, device))

    def text_set(lr: float) -> TextSet:
        return TextSet(
            inputs_embeds=embeds, attention_mask=mask, token_type_ids=types, targets=targets,
            lr=torch.full((m.inner_steps,), float(lr), dtype=clf.body0.dtype, device=device),
            num_classes=data.num_classes, batch_per_class=m.batch_per_class,
        )

    t0 = time.perf_counter()
    heldout = data.train.subset(held)
    grid = {}  # lr -> held-out {accuracy, macro_f1}
    for lr in tqdm(list(m.lr_grid), desc=f"{name} lr grid", disable=not ctx.progress):
        try:
            result = evaluate_text_set(clf, text_set(lr), data, m.grid_runs, seed=cfg.seed, round=1, split=heldout,
                                       batch_size=cfg.eval.test_batch_size, progress=False, head=m.head, **precision)
            grid[float(lr)] = {"accuracy": result.mean, "macro_f1": result.macro_f1["mean"]}
        except DDError:  # this lr diverges: it is simply not chosen
            grid[float(lr)] = {"accuracy": float("nan"), "macro_f1": float("nan")}
    best = pick_lr(grid)
    grid_s = time.perf_counter() - t0
    tset = text_set(best)
    evaluation = evaluate_text_set(clf, tset, data, cfg.eval.num_models, seed=cfg.seed,
                                   batch_size=cfg.eval.test_batch_size, progress=ctx.progress, head=m.head, **precision)
    return TextSynSet(
        tset=tset, evaluation=evaluation, label_type="hard", labels=real.labels.clone(),
        extra_meta={"train_indices": idx.tolist(), "texts": real.texts, "lr_grid": grid, "chosen_lr": best,
                    "holdout": m.holdout, "head": m.head, "inner_steps": m.inner_steps, "batch_per_class": m.batch_per_class,
                    "label_type": "hard", "attention_labels": "none", **extra_meta},
        timings={"lr_grid_s": grid_s, **(timings or {})},
    )


@METHODS.register("random", schema=RandomTextConfig)
def run_random(ctx: TextRunContext) -> TextSynSet:
    check_real_set(ctx.cfg.method, ctx.cfg.ipc, len(ctx.data.train))
    held, pool, gen = holdout_split(ctx.data, ctx.cfg.method, ctx.cfg.seed)
    check_ipc(ctx.data, ctx.cfg.ipc, pool)
    idx = random_examples(ctx.data, ctx.cfg.ipc, pool, gen)
    return real_set(ctx, "random", idx, held, {})


def nll_scores(clf, theta: torch.Tensor, split, batch_size: int) -> torch.Tensor:
    """-log p(label | text) of every example of `split` under the weights theta (on the CPU: one copy back)."""
    out = []
    with torch.no_grad():
        for ids, mask, types, labels in batches(split, batch_size, theta.device):
            logits, _ = clf(theta, clf.embed(ids), mask, types)
            out.append(F.cross_entropy(logits, labels, reduction="none"))
    return torch.cat(out).cpu()


def prune_order(members: torch.Tensor, nll: torch.Tensor, skip_noisy: float, k: int) -> torch.Tensor:
    """One class's examples in keeping order: highest NLL first, after dropping the top skip_noisy fraction
    (floor; never so many that fewer than k are left)."""
    order = members[torch.argsort(nll, descending=True, stable=True)]
    skip = min(int(skip_noisy * len(order)), max(0, len(order) - k))
    return order[skip:]


@METHODS.register("loss_prune", schema=LossPruneConfig)
def run_loss_prune(ctx: TextRunContext) -> TextSynSet:
    """Keep, per class, the ipc examples of highest label NLL under a fine-tuned scorer, after skipping
    the top `skip_noisy` fraction of the class (the examples the scorer contradicts most: likely label noise)."""
    cfg, data, clf = ctx.cfg, ctx.data, ctx.classifier
    m = cfg.method
    check_real_set(m, cfg.ipc, len(data.train))
    if not 0 <= m.skip_noisy < 1:
        raise DDError(f"method.skip_noisy={m.skip_noisy} is not allowed; it must be in [0, 1)")
    held, pool, _ = holdout_split(data, m, cfg.seed)
    check_ipc(data, cfg.ipc, pool)
    scorer = m.scorer
    t0 = time.perf_counter()
    theta = finetune(clf, data.train.subset(pool), scorer, cfg.seed, 0, ctx.device, ctx.progress, purpose="loss_prune",
                     **eval_precision(cfg))
    nll = torch.zeros(len(data.train))
    nll[pool] = nll_scores(clf, theta, data.train.subset(pool), cfg.eval.test_batch_size)
    score_s = time.perf_counter() - t0

    idx = per_class_picks(data, pool, cfg.ipc, lambda members: prune_order(members, nll[members], m.skip_noisy, cfg.ipc))
    return real_set(ctx, "loss_prune", idx, held,
                    {"rule": f"per class: drop the top {m.skip_noisy:.0%} by label NLL (likely label noise), "
                             "keep the highest-NLL remaining", "nll": nll[idx].tolist(),
                     "scorer": OmegaConf.to_container(scorer)},
                    {"score_s": score_s})


@torch.no_grad()
def cls_features(clf, split, batch_size: int, device) -> torch.Tensor:
    """The pretrained backbone's final [CLS] state of every example (the body alone: no head involved), on the
    CPU (one copy back)."""
    theta = torch.cat([clf.body0, torch.zeros(clf.head_numel, dtype=clf.body0.dtype, device=clf.body0.device)])
    params = clf.unflatten(theta)
    body_params = {k[len("body."):]: v for k, v in params.items() if k.startswith("body.")}
    out = []
    for ids, mask, types, _ in batches(split, batch_size, device):
        embeds = clf.embed(ids)
        hidden = torch.func.functional_call(clf.module.body, body_params, (), {
            "inputs_embeds": embeds, "attention_mask": clf.module.body_mask(mask, embeds.dtype),
            "token_type_ids": types}, strict=False)
        out.append(hidden.last_hidden_state[:, 0].float())
    return torch.cat(out).cpu()


@METHODS.register("herding", schema=HerdingTextConfig)
def run_herding(ctx: TextRunContext) -> TextSynSet:
    """Herding (Welling 2009) per class on the backbone's [CLS] embeddings of the pool."""
    cfg, data, clf = ctx.cfg, ctx.data, ctx.classifier
    check_real_set(cfg.method, cfg.ipc, len(data.train))
    held, pool, _ = holdout_split(data, cfg.method, cfg.seed)
    check_ipc(data, cfg.ipc, pool)
    t0 = time.perf_counter()
    feats = torch.zeros(len(data.train), clf.hidden_size)
    feats[pool] = cls_features(clf, data.train.subset(pool), cfg.eval.test_batch_size, ctx.device)
    idx = per_class_picks(data, pool, cfg.ipc, lambda members: members[herding(feats[members], cfg.ipc)])
    return real_set(ctx, "herding", idx, held, {"features": "pretrained [CLS] final state"},
                    {"features_s": time.perf_counter() - t0})


def finetune(clf, train, m, seed: int, run: int, device, progress: bool, purpose: str = "finetune", tf32: bool = True,
             autocast: str | None = None) -> torch.Tensor:
    """Fine-tuning run `run` on the split `train` from the pretrained body and a fresh head; returns the weights.

    Divergence is checked once per epoch (one copy of the epoch's losses): a non-finite loss raises."""
    theta = clf.new_theta(seeds.generator(f"{purpose}_head", seed, run)).requires_grad_(True)
    # AdamW on one flat vector is the same elementwise update as AdamW on every parameter tensor
    opt = torch.optim.AdamW([theta], lr=m.lr, weight_decay=m.weight_decay)
    per_epoch = -(-len(train) // m.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(m.epochs * per_epoch, m.warmup_ratio))
    gen = seeds.generator(f"{purpose}_data", seed, run)
    for epoch in tqdm(range(m.epochs), desc="fine-tune", leave=False, disable=not progress):
        order = torch.randperm(len(train), generator=gen)
        losses = []
        with phase(tf32, device, autocast):
            for ids, mask, types, labels in batches(train, m.batch_size, device, order=order):
                logits, _ = clf(theta, clf.embed(ids), mask, types)
                loss = F.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([theta], m.max_grad_norm)
                opt.step()
                sched.step()
                losses.append(loss.detach())
        bad = [v for v in torch.stack(losses).tolist() if not math.isfinite(v)] if losses else []  # one wait
        if bad:
            raise DDError(f"fine-tuning diverged (loss {bad[0]}) in epoch {epoch}; lower method.lr={m.lr}")
    return theta.detach()


@METHODS.register("full", schema=FullFinetuneConfig)
def run_full(ctx: TextRunContext) -> TextSynSet:
    cfg, data, clf = ctx.cfg, ctx.data, ctx.classifier
    m = cfg.method
    require_positive({key: m[key] for key in ("epochs", "batch_size", "lr", "num_runs", "max_grad_norm")})
    if not 0 <= m.warmup_ratio < 1:
        raise DDError(f"method.warmup_ratio={m.warmup_ratio} is not allowed; it must be in [0, 1)")
    t0 = time.perf_counter()
    scores = []
    for k in tqdm(range(m.num_runs), desc="full fine-tune", disable=not ctx.progress):
        theta = finetune(clf, data.train, m, cfg.seed, k, ctx.device, ctx.progress, **eval_precision(cfg))
        scores.append(score(clf, theta, data.test, cfg.eval.test_batch_size))
    evaluation = summarise(scores, clf.backbone.name, time.perf_counter() - t0, None, data.f1, data.test)
    return TextSynSet(tset=None, evaluation=evaluation, export=False,
                      extra_meta={"epochs": m.epochs, "lr": m.lr, "batch_size": m.batch_size})
