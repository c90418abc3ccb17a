"""Evaluation rounds during distillation: K fresh models on the current set, logged and drawn.

Round `it + 1` holds the models of iteration `it`, so no round ever shares models with the final
evaluation (round 0). What a method does with a round (watch it, or select the best set on it, as
the reference MTT code does) is up to the method."""

import logging

import torch

from dd.errors import DDError
from dd.image.evaluate import EvalResult, evaluate_set
from dd.registry import RunContext
from dd.viz import save_grid

log = logging.getLogger(__name__)


def check_eval_every(value: int) -> None:
    if value < 0:
        raise DDError(f"method.eval_every={value} is not allowed; give a number of iterations, or 0 for no "
                      "evaluation during the run")


def due(eval_every: int, it: int) -> bool:
    """Whether iteration `it` gets a round (eval_every 0: never)."""
    return eval_every > 0 and it % eval_every == 0


def evaluation_round(ctx: RunContext, history: list, images: torch.Tensor, labels: torch.Tensor, it: int,
                     lr: float | None = None) -> EvalResult:
    """Evaluates the set of iteration `it` on the fresh models of round it + 1, appends the row to `history`,
    logs it and saves the set's grid under progress/."""
    result = evaluate_set(images, labels, ctx.data, ctx.cfg.model, ctx.cfg.eval, lr=lr, seed=ctx.cfg.seed,
                          round=it + 1, device=ctx.device, progress=False)
    row = {"iteration": it, "acc_mean": result.mean, "acc_std": result.std}
    history.append(row if lr is None else {**row, "lr": lr})
    ctx.tracker.log({"eval/acc_mean": result.mean, "eval/acc_std": result.std}, step=it)
    grid = ctx.out_dir / "progress" / f"iter_{it:06d}.png"
    suffix = "" if lr is None else f" (lr {lr:.4g})"
    save_grid(ctx.data.to_pixels(images.cpu()), labels.cpu(), ctx.data.class_names, grid,
              title=f"iteration {it}: {result}")
    ctx.tracker.log_image("grid", grid, step=it)
    log.info("iteration %d: %s%s", it, result, suffix)
    return result
