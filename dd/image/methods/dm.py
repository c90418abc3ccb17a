"""Distribution matching (DM; Zhao & Bilen, WACV 2023).

Each iteration builds a fresh, never-trained network psi (the run's model, ConvNet by default) and,
for every class c, compares the mean embedding of a batch of real images with the mean embedding of
the class's synthetic images, both under the same DSA transform A_w (Siamese: one seed w for both
batches, one parameter set for the whole batch, as the reference code does):

    L = sum_c || mean_i psi(A_w(x_i^c)) - mean_j psi(A_w(s_j^c)) ||^2

The embedding is the flattened feature map before the classifier (`model.embed`). One SGD step
(lr_img, momentum 0.5) on the images per iteration: there is no inner loop and no network training,
so an iteration costs one forward pass of the real batches and one forward and backward pass of the
synthetic set.

Random streams (dd.seeds): the network of iteration t starts from ("dm_net", seed, t); the initial
images, the real batches and the augmentation seeds come from one generator, ("distill", seed), whose
state is checkpointed, so a resumed run reaches exactly the images of an uninterrupted one (on CPU).

The set handed back is the final one, as the reference code reports it (the accuracy after the last
iteration); the rounds evaluated every `eval_every` iterations are for watching the run, and the
best of them is only recorded in the set's meta. With `select=test|val` the rounds (and the final set,
as one more round) score on that split and the best round's set is handed back instead, re-evaluated
on fresh models (dd.image.rounds: `val` scores on held-out training images, and `select_lrs` picks
the evaluation lr there).
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from dd import dist, seeds
from dd.checkpoint import CHECKPOINT, Checkpointer, run_digest, should_resume
from dd.data import DSA
from dd.device import to_device
from dd.errors import DDError, require_positive
from dd.image.base import METHODS, LearnedImages, SynSet
from dd.image.evaluate import EvalResult, evaluate_set
from dd.image.methods.coreset import check_ipc
from dd.image.methods.mtt import initial_images
from dd.image.rounds import (
    check_eval_every,
    check_select,
    due,
    evaluation_round,
    pick_lr,
    selection_record,
    split_of,
)
from dd.image.train import fresh_model
from dd.models import model_has_state
from dd.registry import RunContext
from dd.viz import save_curves

log = logging.getLogger(__name__)


@dataclass
class DMConfig:
    """Distribution matching (Zhao & Bilen 2023); defaults are the reference code's (main_DM.py)."""

    name: str = "dm"
    iterations: int = 20000
    lr_img: float = 1.0  # SGD on the images; the DM README: 1 for CIFAR-10 IPC <= 50 and CIFAR-100
    momentum: float = 0.5
    batch_real: int = 256  # real images per class and iteration (a smaller class gives all it has)
    init: str = "real"  # real | noise
    dsa: bool = True  # Siamese augmentation of both batches (false: the raw images are embedded)
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    eval_every: int = 2000  # the reference evaluates every 2000 iterations (and at 0); 0: never
    # last: the final set (the reference) | test: the best round's set, scored on the test split (it peeks) |
    # val: scored on the images dataset.holdout_per_class holds out of the training split
    select: str = "last"
    select_lrs: list[float] | None = None  # select=val: the evaluation lrs tried on the held-out split; null: eval.lr
    checkpoint_every: int = 500


INITS = ("real", "noise")
SELECTS = ("last", "test", "val")


def check_method(m, data, ipc: int) -> None:
    """Refuse bad values before anything is written."""
    check_ipc(data, ipc)
    positive = {"iterations": m.iterations, "lr_img": m.lr_img, "batch_real": m.batch_real,
                "checkpoint_every": m.checkpoint_every}
    require_positive(positive)
    check_eval_every(m.eval_every)
    if not 0 <= m.momentum < 1:
        raise DDError(f"method.momentum={m.momentum} is not allowed; it must be in [0, 1)")
    if m.init not in INITS:
        raise DDError(f"method.init '{m.init}' is unknown; choose one of: {', '.join(INITS)}")
    dist.require_share(data.num_classes, "classes", "each rank matches whole classes")
    if m.dsa:
        DSA(m.dsa_strategy)  # an unknown transform name is refused here, with DSA's message


# --- the objective ---------------------------------------------------------------------------------


def dm_loss(embed: Callable, reals: list[torch.Tensor], syns: list[torch.Tensor], dsa: DSA | None = None,
            aug_seeds: list[int] | None = None, together: bool = False) -> torch.Tensor:
    """sum_c ||mean psi(A(real_c)) - mean psi(A(syn_c))||^2 over the classes c of the two lists.

    reals[c]: (n_c, C, H, W) real images of class c; syns[c]: (ipc, C, H, W) its synthetic images.
    With `dsa`, class c's two batches are augmented with the same seed aug_seeds[c] (Siamese; a
    batchwise DSA gives every image of both batches one transform). The real embeddings carry no
    gradient. `together` embeds all classes' real images in one call and all synthetic images in
    another, as the reference does for BatchNorm models, whose batch statistics then span the classes.
    """
    if dsa is not None:
        reals = [dsa(x, seed=s) for x, s in zip(reals, aug_seeds, strict=True)]
        syns = [dsa(x, seed=s) for x, s in zip(syns, aug_seeds, strict=True)]
    with torch.no_grad():
        real_emb = _embed_classes(embed, reals, together)
    syn_emb = _embed_classes(embed, syns, together)
    return sum(torch.sum((r.mean(0) - s.mean(0)) ** 2) for r, s in zip(real_emb, syn_emb, strict=True))


def _embed_classes(embed: Callable, batches: list[torch.Tensor], together: bool) -> list[torch.Tensor]:
    if not together:
        return [embed(x) for x in batches]
    return list(embed(torch.cat(batches)).split([len(x) for x in batches]))


# --- one iteration ---------------------------------------------------------------------------------


@dataclass
class ClassBatch:
    """What iteration t draws for one class: which real images, and the shared augmentation seed."""

    real_idx: torch.Tensor  # positions into that class's real images
    aug_seed: int


def iteration_network(model_cfg, data, seed: int, it: int, device) -> torch.nn.Module:
    """The network of iteration `it`: fresh from the stream ("dm_net", seed, it), never trained.
    Its parameters are frozen (only the images learn); train mode, as the reference embeds."""
    net = fresh_model(model_cfg, data, seeds.derive("dm_net", seed, it), device)
    net.requires_grad_(False)
    return net.train()


def draw_batches(class_sizes: list[int], batch_real: int, gen: torch.Generator) -> list[ClassBatch]:
    """Per class, up to batch_real real images without replacement, and one augmentation seed."""
    plan = []
    for n in class_sizes:
        idx = torch.randperm(n, generator=gen)[:batch_real]
        plan.append(ClassBatch(idx, int(torch.randint(2**31 - 1, (1,), generator=gen))))
    return plan


def dm_iteration(syn: LearnedImages, net: torch.nn.Module, real_by_class: list[torch.Tensor],
                 plan: list[ClassBatch], dsa: DSA | None) -> float:
    """The DM loss of one iteration and one optimiser step of the images; returns the loss (the iteration's one
    host read; the classes' real indices reach the device in one copy)."""
    moved = to_device(torch.cat([b.real_idx for b in plan]), real_by_class[0].device).split(
        [len(b.real_idx) for b in plan])
    # in a job of several processes each rank takes the classes dealt to it (dd.dist): a class's images get
    # their whole gradient there, and the ranks add their parts before the (replicated) image step
    mine = dist.strided(list(range(len(plan))))
    reals = [real_by_class[c][moved[c]] for c in mine]
    syns = [syn.of_class(c) for c in mine]
    loss = dm_loss(net.embed, reals, syns, dsa, [plan[c].aug_seed for c in mine], together=model_has_state(net))
    total = dist.all_sum_([loss.detach().clone()])[0]
    value = float(total)
    if not math.isfinite(value):
        raise DDError(f"the distribution-matching loss is not finite ({value}); lower method.lr_img")
    syn.opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.all_sum_([syn.images.grad])
    syn.opt.step()
    return value


# --- the loop --------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """Everything of the loop a resume needs besides the images, their optimiser and the generator."""

    next_it: int = 0
    history: list = field(default_factory=list)  # {"iteration", "loss"} and evaluation rows
    # {"iteration", "evaluation"} of the best round: recorded (select=last), or selected with its "images"
    best: dict | None = None
    last_evaluation: dict | None = None
    iter_s: float = 0.0


@dataclass
class Setup:
    syn: LearnedImages
    real_by_class: list[torch.Tensor]  # on the device
    dsa: DSA | None
    gen: torch.Generator
    state: LoopState
    ckpt: Checkpointer


def set_up(ctx: RunContext) -> Setup:
    """Checks, the initial images (or the checkpoint's), the real images per class, the augmentation."""
    cfg, data, m = ctx.cfg, ctx.data, ctx.cfg.method
    check_method(m, data, cfg.ipc)
    check_select(cfg, SELECTS)
    if dist.world() > 1:
        with torch.device("meta"):  # shapes only
            probe = iteration_network(cfg.model, data, cfg.seed, 0, "meta")
        if model_has_state(probe):
            raise DDError("a BatchNorm model embeds every class in one batch, which processes sharing out the "
                          f"classes cannot do; use an instance-norm model or run one process (this job has {dist.world()})")
    gen = seeds.generator("distill", cfg.seed)
    images, labels = initial_images(data, cfg.ipc, m.init, gen)
    syn = LearnedImages.create(images.to(ctx.device), labels.to(ctx.device), cfg.ipc, m.lr_img, m.momentum)
    real_by_class = [data.train_x[data.indices_of_class(c)].to(ctx.device) for c in range(data.num_classes)]
    dsa = DSA(m.dsa_strategy, flip=data.flip, batchwise=True) if m.dsa else None
    state, ckpt = LoopState(), Checkpointer(ctx.out_dir / CHECKPOINT, run_digest(cfg))
    if should_resume(cfg, ckpt.path):
        state = ckpt.restore(syn, LoopState, gen)
    return Setup(syn, real_by_class, dsa, gen, state, ckpt)


def evaluate_round(ctx: RunContext, syn: LearnedImages, state: LoopState, it: int) -> None:
    """A round (round it + 1): for watching the run (select=last: the best is recorded, never selected), or
    scored on method.select's split, keeping the best round's images."""
    split = split_of(ctx.cfg.method.select)
    result = evaluation_round(ctx, state.history, syn.images.detach(), syn.labels, it, split=split or "test")
    state.last_evaluation = result.as_dict()
    if state.best is None or result.mean > state.best["evaluation"]["mean"]:
        state.best = {"iteration": it, "evaluation": result.as_dict()}
        if split is not None:
            state.best["images"] = syn.images.detach().cpu().clone()


@METHODS.register("dm", schema=DMConfig)
def distill(ctx: RunContext) -> SynSet:
    cfg, m = ctx.cfg, ctx.cfg.method
    run = set_up(ctx)
    syn, state = run.syn, run.state
    class_sizes = [len(x) for x in run.real_by_class]
    bar = tqdm(range(state.next_it, m.iterations), desc=f"dm {ctx.data.name} ipc={cfg.ipc}",
               disable=not ctx.progress, initial=state.next_it, total=m.iterations)
    for it in bar:
        if it > 0 and it % m.checkpoint_every == 0 and it != state.next_it:
            run.ckpt.save(syn, state, it, run.gen)
        if due(m.eval_every, it):  # the final set is evaluated by the pipeline (round 0)
            evaluate_round(ctx, syn, state, it)
        t_it = time.perf_counter()
        net = iteration_network(cfg.model, ctx.data, cfg.seed, it, ctx.device)
        plan = draw_batches(class_sizes, m.batch_real, run.gen)
        loss = dm_iteration(syn, net, run.real_by_class, plan, run.dsa)
        state.iter_s += time.perf_counter() - t_it
        state.history.append({"iteration": it, "loss": loss})
        ctx.tracker.log({"matching_loss": loss}, step=it)
        bar.set_postfix(loss=f"{loss:.4g}")
    if m.select != "last":  # the final set competes too (the pipeline's round 0 never does)
        evaluate_round(ctx, syn, state, m.iterations)
    run.ckpt.save(syn, state, m.iterations, run.gen)
    return finish(ctx, syn, state)


def finish(ctx: RunContext, syn: LearnedImages, state: LoopState) -> SynSet:
    """The final images (the pipeline evaluates them on fresh models, round 0), or with select=test|val the best
    round's images re-evaluated on fresh models (round 0, at the lr picked with select_lrs) and the final ones
    beside them; curves and timings."""
    cfg, m = ctx.cfg, ctx.cfg.method
    save_curves(state.history, ctx.out_dir / "curves.png", title=f"dm {ctx.data.name} ipc={cfg.ipc}")
    rounds = [h for h in state.history if "acc_mean" in h]
    steps = sum(1 for h in state.history if "loss" in h)
    meta = {"iteration": m.iterations, "rounds": rounds}
    timings = {"distill_s": state.iter_s, "s_per_iteration": state.iter_s / max(1, steps)}
    images, labels = syn.images.detach().cpu(), syn.labels.cpu()
    if m.select == "last":
        if state.best is not None:
            meta["best_round"] = {"iteration": state.best["iteration"], "mean": state.best["evaluation"]["mean"],
                                  "note": "recorded only: the set is the final one, as the reference reports"}
        return SynSet(images=images, labels=labels, extra_meta=meta, timings=timings)
    best = state.best
    lr, lr_rows = None, None
    if m.get("select_lrs"):  # rounds after every selection round's (dd.image.rounds)
        lr, lr_rows = pick_lr(ctx, best["images"], labels, m.select_lrs, m.iterations + 2)
    final = evaluate_set(best["images"], labels, ctx.data, cfg.model, cfg.eval, lr=lr, seed=cfg.seed, round=0,
                         device=ctx.device, progress=ctx.progress, desc="evaluate best")
    fields = EvalResult.__dataclass_fields__
    last = SynSet(images=images, labels=labels, extra_meta={"iteration": m.iterations},
                  evaluation=EvalResult(**{k: v for k, v in state.last_evaluation.items() if k in fields}))
    meta.update(best_iteration=best["iteration"], selection_evaluation=best["evaluation"],
                selection=selection_record(ctx, m.select, state.history, best["iteration"], lr_rows, lr))
    # a picked lr travels with the set (dd-eval trains with it, as the reported evaluation did); it is not learned
    return SynSet(images=best["images"], labels=labels, lr=None if lr is None else torch.tensor(lr), evaluation=final,
                  last=last, extra_meta=meta, timings=timings)
