"""Method registry: name -> function(RunContext) -> SynSet."""

from dd.errors import DDError
from dd.methods import coreset
from dd.methods.base import RunContext, SynSet


def run_coreset(ctx: RunContext) -> SynSet:
    cfg = ctx.cfg
    idx = coreset.select(
        cfg.method.name, ctx.data, cfg.ipc, seed=cfg.seed, model_cfg=cfg.model, method_cfg=cfg.method,
        eval_cfg=cfg.eval, device=ctx.device, progress=ctx.progress,
    )
    return SynSet(ctx.data.train_x[idx], ctx.data.train_y[idx], extra_meta={"train_indices": idx.tolist()})


def run_full(ctx: RunContext) -> SynSet:
    return SynSet(ctx.data.train_x, ctx.data.train_y, export=False)


def run_mtt(ctx: RunContext) -> SynSet:
    from dd.methods.mtt import distill

    return distill(ctx)


def run_attention_labels(ctx: RunContext):
    from dd.methods.attention_labels import distill

    return distill(ctx)


def run_random_text(ctx: RunContext):
    from dd.methods.text_baselines import run_random_text

    return run_random_text(ctx)


def run_full_finetune(ctx: RunContext):
    from dd.methods.text_baselines import run_full_finetune

    return run_full_finetune(ctx)


def run_loss_prune(ctx: RunContext):
    from dd.methods.text_baselines import run_loss_prune

    return run_loss_prune(ctx)


def run_herding_text(ctx: RunContext):
    from dd.methods.text_baselines import run_herding_text

    return run_herding_text(ctx)


METHODS = {"random": run_coreset, "herding": run_coreset, "kcenter": run_coreset, "full": run_full, "mtt": run_mtt,
           # text methods (dataset kind=text; run through dd.text_pipeline)
           "attention_labels": run_attention_labels, "random_text": run_random_text,
           "full_finetune": run_full_finetune, "loss_prune": run_loss_prune, "herding_text": run_herding_text}


def run_method(ctx: RunContext) -> SynSet:
    name = ctx.cfg.method.name
    if name not in METHODS:
        raise DDError(f"method '{name}' is unknown; choose one of: {', '.join(METHODS)}")
    return METHODS[name](ctx)
