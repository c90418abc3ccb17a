"""Dataset Condensation with gradient matching (DC, Zhao, Mopuri & Bilen, ICLR 2021).

Each iteration draws a freshly initialised network and alternates, `outer_loop` times,
  1. one image step on  sum_c D(grad_theta L(real_c), grad_theta L(syn_c)),
     where real_c is a batch of `batch_real` real images of class c, syn_c the class's synthetic
     images, and D the layer-wise distance `gradient_distance`;
  2. `inner_loop` epochs of plain SGD (lr_net) of the network on the synthetic set
     (skipped after the last outer step, as the reference code does).
The paper's (outer_loop, inner_loop) per IPC: 1 -> (1, 1), 10 -> (10, 50), 50 -> (50, 10); at IPC 1
the network is never trained, so only gradients at random initialisations are matched.

With `dsa` (Zhao & Bilen, ICML 2021; dd/image/methods/dsa.py registers it with its defaults),
both batches of a class get the same differentiable augmentation in step 1 (Siamese, one
transform for the whole batch), and the network sees per-image augmentation in step 2.

Randomness: the network of iteration i starts from the stream ("dc_net", seed, i); the real
batches, augmentation seeds and training order of iteration i come from ("dc_data", seed, i);
the initial images from ("dc_init", seed). A resumed run therefore needs no generator state and
reaches the images of an uninterrupted one (on CPU).
"""

import logging
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from dd import dist, seeds
from dd.checkpoint import CHECKPOINT, Checkpointer, run_digest, should_resume
from dd.data import DSA
from dd.data.augment import parse_strategy
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
from dd.image.train import Schedule, fresh_model, set_loss, train_on_set
from dd.models import model_has_state
from dd.registry import RunContext
from dd.viz import save_curves

log = logging.getLogger(__name__)

# The paper's (outer_loop, inner_loop) per images per class (the reference code's get_loops).
PAPER_LOOPS = {1: (1, 1), 10: (10, 50), 50: (50, 10)}
INITS = ("real", "noise")
SELECTS = ("last", "test", "val")


@dataclass
class DCConfig:
    """Gradient matching (Zhao et al. 2021); names as in the reference code."""

    name: str = "dc"
    iterations: int = 1000  # each one a freshly initialised network
    outer_loop: int | None = None  # image steps per network; null = PAPER_LOOPS[ipc]
    inner_loop: int | None = None  # network epochs on the synthetic set between them; null = PAPER_LOOPS[ipc]
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01  # plain SGD (no momentum, no weight decay)
    batch_real: int = 256  # real images per class per image step (all of a class when it has fewer)
    batch_train: int = 256  # synthetic images per network step
    init: str = "noise"  # noise (DC's default) | real
    dsa: bool = False  # Siamese differentiable augmentation (method=dsa turns it on)
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"  # flip is dropped on digit-like data
    # last: the final set, as the reference reports | test: the best evaluation round, scored on the test split
    # (it peeks) | val: scored on the images dataset.holdout_per_class holds out of the training split
    select: str = "last"
    select_lrs: list[float] | None = None  # select=val: the evaluation lrs tried on the held-out split; null: eval.lr
    eval_every: int = 500  # evaluate fresh models every this many iterations (rounds it + 1); 0: never
    checkpoint_every: int = 100


def loops(m, ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop): the configured values, else the paper's for this IPC."""
    paper = PAPER_LOOPS.get(ipc)
    if paper is None and (m.outer_loop is None or m.inner_loop is None):
        raise DDError(f"ipc={ipc} has no published (outer_loop, inner_loop) (the paper gives them for ipc "
                      f"{', '.join(map(str, PAPER_LOOPS))}); set method.outer_loop and method.inner_loop")
    outer = paper[0] if m.outer_loop is None else m.outer_loop
    inner = paper[1] if m.inner_loop is None else m.inner_loop
    return outer, inner


def check_method(m, ipc: int, model: torch.nn.Module) -> None:
    positive = {"iterations": m.iterations, "lr_img": m.lr_img, "lr_net": m.lr_net, "batch_real": m.batch_real,
                "batch_train": m.batch_train, "checkpoint_every": m.checkpoint_every}
    for key in ("outer_loop", "inner_loop"):
        if getattr(m, key) is not None:
            positive[key] = getattr(m, key)
    require_positive(positive)
    check_eval_every(m.eval_every)
    if not 0 <= m.momentum_img < 1:
        raise DDError(f"method.momentum_img={m.momentum_img} is not allowed; it must be in [0, 1)")
    if m.init not in INITS:
        raise DDError(f"method.init '{m.init}' is unknown; choose one of: {', '.join(INITS)}")
    if m.select == "best":
        raise DDError(f"method.select=best is now method.select=test (the best round, picked on the test split); "
                      f"choose one of: {', '.join(SELECTS)}")
    parse_strategy(m.dsa_strategy)  # names an unknown transform in one line
    loops(m, ipc)
    if model_has_state(model):
        raise DDError("gradient matching here needs a model without BatchNorm running statistics "
                      "(e.g. model=convnet, instance norm as in the paper)")


def gradient_distance(real_grads, syn_grads) -> torch.Tensor:
    """The paper's layer-wise distance between two lists of parameter gradients.

    Per tensor, the gradient is reshaped to (out, rest) (a conv weight (out, in, h, w) to
    (out, in*h*w)), and each output row i contributes 1 - <g_i, g'_i> / (|g_i| |g'_i| + 1e-6).
    1-D tensors (biases, norm scales and shifts) contribute nothing."""
    total = syn_grads[0].new_zeros(())
    for real, syn in zip(real_grads, syn_grads, strict=True):
        if real.dim() <= 1:
            continue
        real, syn = real.reshape(real.shape[0], -1), syn.reshape(syn.shape[0], -1)
        cos = (real * syn).sum(-1) / (real.norm(dim=-1) * syn.norm(dim=-1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def matching_loss(net: torch.nn.Module, real: list[torch.Tensor], syn: list[torch.Tensor], dsa: DSA | None,
                  aug_seeds: list[int], classes: list[int] | None = None) -> torch.Tensor:
    """sum_c gradient_distance(grad of CE on real[c], grad of CE on syn[c]), differentiable in syn.

    real[c], syn[c]: (n, C, H, W) images of class classes[c] (default: class c). With DSA, both batches of a
    class are augmented with the same seed aug_seeds[c] (Siamese; `dsa` is batchwise, so one transform per batch)."""
    params = [p for p in net.parameters() if p.requires_grad]
    total = syn[0].new_zeros(())
    classes = range(len(real)) if classes is None else classes
    for c, x_real, x_syn, aug_seed in zip(classes, real, syn, aug_seeds, strict=True):
        if dsa is not None:
            x_real, x_syn = dsa(x_real, seed=aug_seed), dsa(x_syn, seed=aug_seed)
        y_real = torch.full((len(x_real),), c, dtype=torch.long, device=x_real.device)
        y_syn = torch.full((len(x_syn),), c, dtype=torch.long, device=x_syn.device)
        g_real = [g.detach() for g in torch.autograd.grad(set_loss(net(x_real), y_real), params)]
        g_syn = torch.autograd.grad(set_loss(net(x_syn), y_syn), params, create_graph=True)
        total = total + gradient_distance(g_real, g_syn)
    return total


@dataclass
class Augment:
    """The two DSA callables of a run: batchwise for matching, per image for network training."""

    match: DSA | None
    train: DSA | None

    @classmethod
    def create(cls, m, flip: bool) -> "Augment":
        if not m.dsa:
            return cls(None, None)
        return cls(DSA(m.dsa_strategy, flip=flip, batchwise=True), DSA(m.dsa_strategy, flip=flip))


@dataclass
class LoopState:
    """What a resume needs besides the images and their optimiser."""

    next_it: int = 0
    history: list = field(default_factory=list)  # {"iteration", "loss"} and evaluation rows
    best: dict | None = None  # select=test|val: the set of the best evaluation round (on that split)
    last_evaluation: dict | None = None
    iter_s: float = 0.0


def real_batches(class_images: list[torch.Tensor], batch_real: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Per class, batch_real images drawn without replacement (all of them when the class has fewer); the
    classes' indices reach the device in one copy."""
    picks = [torch.randperm(len(x), generator=gen)[:batch_real] for x in class_images]
    moved = to_device(torch.cat(picks), class_images[0].device).split([len(p) for p in picks])
    return [x[idx] for x, idx in zip(class_images, moved, strict=True)]


def iteration(net: torch.nn.Module, syn: LearnedImages, class_images: list[torch.Tensor], aug: Augment, m,
              outer_loop: int, inner_loop: int, gen: torch.Generator) -> float:
    """One iteration on a fresh network: outer_loop image steps, with inner_loop network epochs on the
    synthetic set between them. Returns the matching loss per class and outer step (as the paper logs).

    In a job of several processes (dd.dist) each rank matches the classes dealt to it; a class's images get
    their whole gradient on one rank, and the ranks add their parts before the (replicated) image step."""
    net.train()
    num_classes = len(class_images)
    mine = dist.strided(list(range(num_classes)))
    total = torch.zeros((), device=syn.images.device)
    for ol in range(outer_loop):
        real = real_batches(class_images, m.batch_real, gen)
        aug_seeds = [int(torch.randint(2**31 - 1, (1,), generator=gen)) for _ in range(num_classes)]
        loss = matching_loss(net, [real[c] for c in mine], [syn.of_class(c) for c in mine], aug.match,
                             [aug_seeds[c] for c in mine], classes=mine)
        syn.opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.all_sum_([syn.images.grad])
        syn.opt.step()
        total += loss.detach()
        if ol < outer_loop - 1:
            train_network(net, syn, inner_loop, m, aug.train, gen)
    dist.all_sum_([total])
    return float(total) / (num_classes * outer_loop)  # the iteration's one host read


def train_network(net: torch.nn.Module, syn: LearnedImages, epochs: int, m, dsa: DSA | None, gen: torch.Generator):
    """`epochs` shuffled passes of plain SGD (lr_net) over the current synthetic set (a detached copy)."""
    # Schedule(epochs, decay_after=epochs): the lr never drops
    # the loss is checked once, after the last epoch: these epochs are a step or two each
    train_on_set(net, syn.images.detach(), syn.labels, schedule=Schedule(epochs, epochs, restart=False),
                 lr=m.lr_net, batch_size=m.batch_train, momentum=0.0, weight_decay=0.0, dsa=dsa, generator=gen,
                 check_every=max(1, epochs))
    for p in net.parameters():
        p.grad = None


def evaluate_round(ctx: RunContext, syn: LearnedImages, state: LoopState, it: int) -> None:
    """An evaluation during distillation (round it + 1); select=test|val scores it on that split and keeps the
    best round's images (select=last: a round on the test split, for watching)."""
    images = syn.images.detach()
    split = split_of(ctx.cfg.method.select)
    result = evaluation_round(ctx, state.history, images, syn.labels, it, split=split or "test")
    state.last_evaluation = result.as_dict()
    if split is not None and (state.best is None or result.mean > state.best["evaluation"]["mean"]):
        state.best = {"iteration": it, "images": images.cpu().clone(), "evaluation": result.as_dict()}


@dataclass
class Run:
    """What set_up prepares for the loop."""

    syn: LearnedImages
    state: LoopState
    ckpt: Checkpointer
    class_images: list[torch.Tensor]  # the real training images of each class, on the device
    aug: Augment
    outer_loop: int
    inner_loop: int


def set_up(ctx: RunContext) -> Run:
    """Check the config, draw the initial images, and resume if asked (before anything is written)."""
    cfg, data, device, m = ctx.cfg, ctx.data, ctx.device, ctx.cfg.method
    check_ipc(data, cfg.ipc)
    check_method(m, cfg.ipc, fresh_model(cfg.model, data, seeds.derive("dc_net", cfg.seed, 0), "cpu"))
    check_select(cfg, SELECTS)
    outer_loop, inner_loop = loops(m, cfg.ipc)
    dist.require_share(data.num_classes, "classes", "each rank matches whole classes")
    images, labels = initial_images(data, cfg.ipc, m.init, seeds.generator("dc_init", cfg.seed))
    syn = LearnedImages.create(images.to(device), labels.to(device), cfg.ipc, m.lr_img, m.momentum_img)
    state, ckpt = LoopState(), Checkpointer(ctx.out_dir / CHECKPOINT, run_digest(cfg))
    if should_resume(cfg, ckpt.path):
        state = ckpt.restore(syn, LoopState)
    class_images = [data.train_x[data.indices_of_class(c)].to(device) for c in range(data.num_classes)]
    log.info("%s: %d iterations, outer_loop %d, inner_loop %d, dsa %s", m.name, m.iterations, outer_loop,
             inner_loop, m.dsa)
    return Run(syn, state, ckpt, class_images, Augment.create(m, data.flip), outer_loop, inner_loop)


def run_gradient_matching(ctx: RunContext) -> SynSet:
    """The loop DC and DSA share: set up, then per iteration a fresh network and `iteration`."""
    cfg, m = ctx.cfg, ctx.cfg.method
    r = set_up(ctx)
    bar = tqdm(range(r.state.next_it, m.iterations), desc=f"{m.name} {ctx.data.name} ipc={cfg.ipc}",
               disable=not ctx.progress, initial=r.state.next_it, total=m.iterations)
    for it in bar:
        if it > 0 and it % m.checkpoint_every == 0 and it != r.state.next_it:
            r.ckpt.save(r.syn, r.state, it)
        if due(m.eval_every, it):
            evaluate_round(ctx, r.syn, r.state, it)
        t_it = time.perf_counter()
        net = fresh_model(cfg.model, ctx.data, seeds.derive("dc_net", cfg.seed, it), ctx.device)
        loss = iteration(net, r.syn, r.class_images, r.aug, m, r.outer_loop, r.inner_loop,
                         seeds.generator("dc_data", cfg.seed, it))
        r.state.iter_s += time.perf_counter() - t_it
        r.state.history.append({"iteration": it, "loss": loss})
        ctx.tracker.log({"matching_loss": loss}, step=it)
        bar.set_postfix(loss=f"{loss:.4f}")
    if m.select != "last":  # the final set competes too (the pipeline's round 0 never does)
        evaluate_round(ctx, r.syn, r.state, m.iterations)
    r.ckpt.save(r.syn, r.state, m.iterations)
    return finish(ctx, r)


def finish(ctx: RunContext, r: Run) -> SynSet:
    """The set to report: the final images (select=last), or the best round's re-evaluated on fresh models (at
    the lr picked on the held-out split, with select_lrs)."""
    cfg, m = ctx.cfg, ctx.cfg.method
    save_curves(r.state.history, ctx.out_dir / "curves.png", title=f"{m.name} {ctx.data.name} ipc={cfg.ipc}")
    last = SynSet(images=r.syn.images.detach().cpu(), labels=r.syn.labels.cpu(),
                  extra_meta={"iteration": m.iterations})
    timings = {"distill_s": r.state.iter_s, "s_per_iteration": r.state.iter_s / max(1, m.iterations)}
    meta = {"outer_loop": r.outer_loop, "inner_loop": r.inner_loop, "select": m.select,
            "last_evaluation": r.state.last_evaluation}
    if m.select == "last":  # the pipeline evaluates it on fresh models (round 0)
        return SynSet(images=last.images, labels=last.labels, extra_meta={**meta, "iteration": m.iterations},
                      timings=timings)
    best = r.state.best
    lr, lr_rows = None, None
    if m.get("select_lrs"):  # rounds after every selection round's (dd.image.rounds)
        lr, lr_rows = pick_lr(ctx, best["images"], last.labels, m.select_lrs, m.iterations + 2)
    final = evaluate_set(best["images"], last.labels, ctx.data, cfg.model, cfg.eval, lr=lr, seed=cfg.seed, round=0,
                         device=ctx.device, progress=ctx.progress, desc="evaluate best")
    fields = EvalResult.__dataclass_fields__
    last.evaluation = EvalResult(**{k: v for k, v in r.state.last_evaluation.items() if k in fields})
    selection = selection_record(ctx, m.select, r.state.history, best["iteration"], lr_rows, lr)
    # a picked lr travels with the set (dd-eval trains with it, as the reported evaluation did); it is not learned
    return SynSet(images=best["images"], labels=last.labels, lr=None if lr is None else torch.tensor(lr),
                  evaluation=final, last=last, timings=timings,
                  extra_meta={**meta, "best_iteration": best["iteration"], "selection_evaluation": best["evaluation"],
                              "selection": selection})


@METHODS.register("dc", schema=DCConfig)
def distill(ctx: RunContext) -> SynSet:
    return run_gradient_matching(ctx)
