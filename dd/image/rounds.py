"""Evaluation rounds during distillation: K fresh models on the current set, logged and drawn.

Round `it + 1` holds the models of iteration `it`, so no round ever shares models with the final
evaluation (round 0). What a method does with a round (watch it, or select the best set on it, as
the reference MTT code does) is up to the method.

`method.select` says where a method that selects scores its rounds: `test` (the reference code's
choice, which peeks at the split it reports) or `val` (the training images held out by
`dataset.holdout_per_class`, never trained on). With `val`, `method.select_lrs` (sets without a
learned lr: DC, DSA, DM) also picks the evaluation lr on the held-out split, with the models of rounds
iterations + 2, iterations + 3, ... (after every selection round), before the one final test evaluation.
Each method records what it picked in results.json's `selection` (`selection_record`)."""

import logging
import math

import torch

from dd.data import ImageDataset
from dd.errors import DDError
from dd.image.evaluate import EvalResult, evaluate_set
from dd.registry import RunContext
from dd.viz import save_grid

log = logging.getLogger(__name__)

SPLITS = ("test", "val")  # the splits a selection can score on


def check_select(cfg, allowed: tuple[str, ...]) -> None:
    """method.select is one of `allowed`; `val` needs held-out images; method.select_lrs (where the schema
    has it) only with `val`, as a list of positive lrs."""
    m = cfg.method
    if m.select not in allowed:
        raise DDError(f"method.select '{m.select}' is unknown; choose one of: {', '.join(allowed)}")
    holdout = cfg.dataset.get("holdout_per_class") or 0
    if m.select == "val" and holdout <= 0:
        raise DDError(f"method.select=val scores on held-out training images, but dataset.holdout_per_class="
                      f"{holdout}; set dataset.holdout_per_class (e.g. 10) or method.select="
                      f"{'test' if 'test' in allowed else allowed[0]}")
    lrs = m.get("select_lrs")
    if lrs is None:
        return
    if m.select != "val":
        raise DDError(f"method.select_lrs={list(lrs)} is read only with method.select=val (the lr is picked on the "
                      f"held-out split); with method.select={m.select} the set is evaluated at eval.lr")
    if not lrs or not all(isinstance(lr, int | float) and lr > 0 and math.isfinite(lr) for lr in lrs):
        raise DDError(f"method.select_lrs={list(lrs)} is not allowed; give a non-empty list of positive lrs, "
                      "or null (eval.lr only)")


def split_of(select: str) -> str | None:
    """The split a method.select value scores rounds on (test | val), or None for a method that keeps its last set."""
    return select if select in SPLITS else None


def scored_on(data: ImageDataset, split: str | None) -> ImageDataset:
    """The dataset whose test split an evaluation scores on: the held-out split for `val`, else the test split."""
    return data.val_view() if split == "val" else data


def check_eval_every(value: int) -> None:
    if value < 0:
        raise DDError(f"method.eval_every={value} is not allowed; give a number of iterations, or 0 for no "
                      "evaluation during the run")


def due(eval_every: int, it: int) -> bool:
    """Whether iteration `it` gets a round (eval_every 0: never)."""
    return eval_every > 0 and it % eval_every == 0


def evaluation_round(ctx: RunContext, history: list, images: torch.Tensor, labels: torch.Tensor, it: int,
                     lr: float | None = None, split: str | None = "test") -> EvalResult:
    """Evaluates the set of iteration `it` on the fresh models of round it + 1, scored on `split` (test, or
    val: the held-out training images), appends the row to `history`, logs it and saves the set's grid
    under progress/."""
    result = evaluate_set(images, labels, scored_on(ctx.data, split), ctx.cfg.model, ctx.cfg.eval, lr=lr,
                          seed=ctx.cfg.seed, round=it + 1, device=ctx.device, progress=False)
    row = {"iteration": it, "acc_mean": result.mean, "acc_std": result.std}
    row = row if lr is None else {**row, "lr": lr}
    history.append({**row, "split": "val"} if split == "val" else row)
    key = "eval/val_acc" if split == "val" else "eval/acc"
    ctx.tracker.log({f"{key}_mean": result.mean, f"{key}_std": result.std}, step=it)
    grid = ctx.out_dir / "progress" / f"iter_{it:06d}.png"
    suffix = ("" if lr is None else f" (lr {lr:.4g})") + (" on the held-out split" if split == "val" else "")
    save_grid(ctx.data.to_pixels(images.cpu()), labels.cpu(), ctx.data.class_names, grid,
              title=f"iteration {it}: {result}{' (val)' if split == 'val' else ''}")
    ctx.tracker.log_image("grid", grid, step=it)
    log.info("iteration %d: %s%s", it, result, suffix)
    return result


def pick_lr(ctx: RunContext, images: torch.Tensor, labels: torch.Tensor, lrs, first_round: int) -> tuple[float, list]:
    """Each lr of `lrs` scored on the held-out split by the fresh models of rounds first_round, first_round + 1,
    ...; returns the lr with the best mean (the first of equals) and every lr's row."""
    val = scored_on(ctx.data, "val")
    rows = []
    for j, lr in enumerate(lrs):
        result = evaluate_set(images, labels, val, ctx.cfg.model, ctx.cfg.eval, lr=float(lr), seed=ctx.cfg.seed,
                              round=first_round + j, device=ctx.device, progress=False)
        rows.append({"lr": float(lr), "acc_mean": result.mean, "acc_std": result.std})
        log.info("lr %.4g on the held-out split: %s", lr, result)
    best = max(rows, key=lambda r: r["acc_mean"])
    return best["lr"], rows


def selection_record(ctx: RunContext, split: str | None, history: list, iteration: int | None,
                     lr_rows: list | None = None, lr: float | None = None) -> dict | None:
    """results.json's `selection`: the split the set was picked on, how many rounds competed and which
    iteration won, the held-out images per class (val), and the lr search (select_lrs); None without a pick."""
    if split is None:
        return None
    record = {"split": split, "rounds": sum(1 for h in history if "acc_mean" in h), "iteration": iteration}
    if split == "val":
        record["holdout_per_class"] = int(ctx.cfg.dataset.get("holdout_per_class") or 0)
    if lr_rows is not None:
        record["lr"] = lr
        record["lrs"] = lr_rows
    return record
