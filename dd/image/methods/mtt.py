"""Matching Training Trajectories (Cazenavette et al., CVPR 2022).

Each iteration draws an expert and a start epoch s, puts a student at the
expert's parameters theta_s, trains it for `syn_steps` SGD steps on
(augmented) synthetic minibatches with the learned lr, and minimises
    ||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2
over the images (and the lr, and optionally soft labels). The meta-gradient
comes from the configured engine in dd.inner: `auto` (default) is exact within a memory budget,
`reverse` exact with activation memory that does not grow with syn_steps.

All randomness of the distillation comes from one torch.Generator, the stream
("distill", seed), whose state is checkpointed, so a resumed run reaches exactly
the images of an uninterrupted one (on CPU). One outer iteration is
`outer_iteration`: the function `distill` calls and the reference-conformance
tests call with an explicit plan.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dd import dist, seeds
from dd.checkpoint import CHECKPOINT, Checkpointer, run_digest, should_resume
from dd.data import DSA
from dd.device import to_device
from dd.errors import DDError, require_positive
from dd.image.base import METHODS, SynSet
from dd.image.evaluate import EvalResult, evaluate_set
from dd.image.experts import Buffer, build_buffer
from dd.image.methods.coreset import check_ipc
from dd.image.rounds import SPLITS, check_eval_every, check_select, due, evaluation_round, selection_record
from dd.image.train import new_model, set_loss
from dd.inner import ENGINES, MetaGrad, meta_gradient
from dd.models import FlatModel
from dd.registry import RunContext
from dd.viz import save_curves

log = logging.getLogger(__name__)


@dataclass
class MatchingConfig:
    """The keys every trajectory-matching method shares (MTT, DATM); names as in the paper's code."""

    name: str = "mtt"
    iterations: int = 5000
    syn_steps: int = 20  # N: student steps on the synthetic set per iteration
    expert_epochs: int = 2  # M: the expert epochs the student must cover
    min_start_epoch: int = 0
    max_start_epoch: int = 20  # T+: start epochs are drawn from [min_start_epoch, max_start_epoch)
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01  # initial value of the learned student lr
    momentum: float = 0.5  # of the image and lr optimisers (MTT: and of the label optimiser)
    batch_syn: int | None = None  # synthetic images per student step; null = the whole set
    dsa: bool = True
    eval_every: int = 500  # selection rounds every this many iterations and at the end; 0: none, report the final set
    # where selection rounds score: test (the reference code: it peeks at the reported split) | val (the images
    # dataset.holdout_per_class holds out of the training split)
    select: str = "test"
    checkpoint_every: int = 100
    max_nonfinite: int = 10  # consecutive non-finite losses that stop the run
    min_lr: float = 1e-6  # floor of the learned lr: it can never reach zero or go negative


@dataclass
class MTTConfig(MatchingConfig):
    """Trajectory matching (Cazenavette et al. 2022)."""

    lr_label: float = 2.0  # only with soft_labels
    pix_init: str = "real"  # real | noise
    soft_labels: bool = False  # learn label distributions, initialised from an expert's logits


def check_matching(m, inner, buffer_epochs: int, rates: tuple[str, ...] = ("lr_lr",)) -> None:
    """Range checks of the keys every trajectory-matching method shares (MatchingConfig); `rates` are the
    optimiser lrs that may be 0 (a frozen tensor) but not negative."""
    positive = {"iterations": m.iterations + 1, "syn_steps": m.syn_steps, "expert_epochs": m.expert_epochs,
                "lr_img": m.lr_img, "lr_teacher": m.lr_teacher,
                "checkpoint_every": m.checkpoint_every, "max_nonfinite": m.max_nonfinite, "min_lr": m.min_lr}
    require_positive(positive)
    check_eval_every(m.eval_every)
    if any(getattr(m, key) < 0 for key in rates):
        named = ", ".join(f"method.{key}={getattr(m, key)}" for key in rates)
        raise DDError(f"{named}: {'they' if len(rates) > 1 else 'it'} must be >= 0 (0 freezes that tensor)")
    if not 0 <= m.min_start_epoch < m.max_start_epoch:
        raise DDError(f"method.min_start_epoch={m.min_start_epoch}, max_start_epoch={m.max_start_epoch}: "
                      "need 0 <= min_start_epoch < max_start_epoch")
    if m.max_start_epoch - 1 + m.expert_epochs > buffer_epochs:
        raise DDError(f"max_start_epoch={m.max_start_epoch} + expert_epochs={m.expert_epochs} needs experts of at least "
                      f"{m.max_start_epoch - 1 + m.expert_epochs} epochs, but buffer.epochs={buffer_epochs}")
    if m.batch_syn is not None and m.batch_syn <= 0:
        raise DDError(f"method.batch_syn={m.batch_syn} is not allowed; give a positive number or null (the whole set)")
    if inner.engine not in ENGINES:
        raise DDError(f"inner.engine '{inner.engine}' is unknown; choose one of: {', '.join(ENGINES)}")


def check_selection(cfg) -> None:
    """method.select (test | val) of a trajectory-matching run; val needs selection rounds."""
    check_select(cfg, SPLITS)
    if cfg.method.select == "val" and cfg.method.eval_every == 0:
        raise DDError("method.select=val with method.eval_every=0: there are no selection rounds to score on the "
                      "held-out split; set method.eval_every > 0, or leave method.select=test (no selection then)")


def check_method(m, inner, buffer_epochs: int) -> None:
    check_matching(m, inner, buffer_epochs, rates=("lr_lr", "lr_label"))
    if m.pix_init not in ("real", "noise"):
        raise DDError(f"method.pix_init '{m.pix_init}' is unknown; choose one of: real, noise")


def check_world(n: int, batch_syn: int | None, model: torch.nn.Module) -> None:
    """Several processes share out every student step's batch (dd.dist): each needs an image of it, and the
    model must treat images one by one (BatchNorm's batch statistics would differ per share)."""
    w = dist.world()
    if w <= 1:
        return
    batch = n if batch_syn is None else min(batch_syn, n)
    smallest = n % batch or batch  # a pass over the set ends with the remainder
    if smallest < w:
        raise DDError(f"method.batch_syn={batch_syn} with {n} synthetic images makes student steps of {smallest} "
                      f"images, fewer than the {w} processes that share each step; choose batch_syn so that it and "
                      f"the remainder {n} mod batch_syn are both at least {w}")
    if any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in model.modules()):
        raise DDError(f"model.norm=batchnorm computes statistics over each batch, which {w} processes would each "
                      "take over their own share; use instancenorm (the default) or run one process")


def initial_images(data, ipc: int, how: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc images per class, grouped by class: real samples, or Gaussian noise."""
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    if how == "noise":
        return torch.randn(len(labels), *data.train_x.shape[1:], generator=gen), labels
    picks = [idx[torch.randperm(len(idx), generator=gen)[:ipc]]
             for idx in (data.indices_of_class(c) for c in range(data.num_classes))]
    return data.train_x[torch.cat(picks)].clone(), labels


def plan_on_device(plan: list[tuple[torch.Tensor, int]], device) -> list[tuple[torch.Tensor, int]]:
    """The plan's minibatch indices on `device`, moved in one copy (an index on the host would make every
    student step copy it, and wait)."""
    moved = to_device(torch.cat([idx for idx, _ in plan]), device).split([len(idx) for idx, _ in plan])
    return [(idx, seed) for idx, (_, seed) in zip(moved, plan)]


def plan_steps(n: int, batch: int | None, steps: int, gen: torch.Generator) -> list[tuple[torch.Tensor, int]]:
    """(minibatch indices, augmentation seed) for each student step: shuffled passes over the set.

    As the reference code does, a pass is split into chunks of `batch` and the chunks are used from
    the last (so the short remainder comes first)."""
    batch = n if batch is None else min(batch, n)
    chunks: list[torch.Tensor] = []
    plan = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(n, generator=gen).split(batch))
        plan.append((chunks.pop(), int(torch.randint(2**31 - 1, (1,), generator=gen))))
    return plan


@dataclass
class Synthetic:
    """What distillation learns (images, the student lr, optionally soft-label logits) and its optimisers."""

    images: torch.Tensor  # (N, C, H, W) leaf
    labels: torch.Tensor  # (N,) the hard class of each image
    syn_lr: torch.Tensor  # scalar leaf
    opt_img: torch.optim.Optimizer
    opt_lr: torch.optim.Optimizer
    label_logits: torch.Tensor | None = None  # (N, classes) leaf, with soft labels
    opt_label: torch.optim.Optimizer | None = None

    @classmethod
    def create(cls, images, labels, syn_lr: float, m, label_logits=None, label_lr: float | None = None,
               label_momentum: float | None = None) -> "Synthetic":
        """Leaves and optimisers: SGD(lr_img, momentum) on the images, SGD(lr_lr, momentum) on the lr, and with
        label_logits SGD(label_lr, label_momentum) on them (default: MTT's lr_label and momentum)."""
        images = images.detach().clone().requires_grad_(True)
        lr = torch.tensor(float(syn_lr), dtype=images.dtype, device=images.device, requires_grad=True)
        logits, opt_label = None, None
        if label_logits is not None:
            logits = label_logits.detach().clone().requires_grad_(True)
            opt_label = torch.optim.SGD([logits], lr=m.lr_label if label_lr is None else label_lr,
                                        momentum=m.momentum if label_momentum is None else label_momentum)
        return cls(images, labels, lr, torch.optim.SGD([images], lr=m.lr_img, momentum=m.momentum),
                   torch.optim.SGD([lr], lr=m.lr_lr, momentum=m.momentum), logits, opt_label)

    def learnables(self) -> list[torch.Tensor]:
        return [self.images] if self.label_logits is None else [self.images, self.label_logits]

    def targets(self, learn: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """The labels a student step trains on: hard classes, or the softmax of the learned logits."""
        return self.labels[idx] if self.label_logits is None else F.softmax(learn[1][idx], dim=1)

    def lr_value(self) -> float:
        return float(self.syn_lr.detach())

    def eval_labels(self) -> torch.Tensor:
        return self.labels if self.label_logits is None else F.softmax(self.label_logits.detach(), dim=1)

    def apply(self, res: MetaGrad, min_lr: float) -> None:
        """One optimiser step of every learned tensor on the meta-gradient; the lr never goes below min_lr."""
        self.images.grad, self.syn_lr.grad = res.grads[0], res.lr_grad
        self.opt_img.step()
        self.opt_lr.step()
        if self.opt_label is not None:
            self.label_logits.grad = res.grads[1]
            self.opt_label.step()
        with torch.no_grad():
            self.syn_lr.clamp_(min=min_lr)

    def state_dict(self) -> dict:
        return {"images": self.images.detach(), "syn_lr": self.syn_lr.detach(),
                "label_logits": None if self.label_logits is None else self.label_logits.detach(),
                "opt_img": self.opt_img.state_dict(), "opt_lr": self.opt_lr.state_dict(),
                "opt_label": None if self.opt_label is None else self.opt_label.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        with torch.no_grad():
            self.images.copy_(saved["images"])
            self.syn_lr.copy_(saved["syn_lr"])
            if self.label_logits is not None:
                self.label_logits.copy_(saved["label_logits"])
        self.opt_img.load_state_dict(saved["opt_img"])
        self.opt_lr.load_state_dict(saved["opt_lr"])
        if self.opt_label is not None:
            self.opt_label.load_state_dict(saved["opt_label"])


@dataclass
class Segment:
    """A stretch of one expert's trajectory: the student starts at `start` and must reach `target`."""

    expert: int
    start_epoch: int
    start: torch.Tensor  # theta*_s, flat
    target: torch.Tensor  # theta*_{s+M}, flat


def draw_segment(buffer: Buffer, experts: list[int], m, gen: torch.Generator, device,
                 max_start_epoch: int | None = None) -> Segment:
    """An expert uniformly, and a start epoch s uniformly in [min_start_epoch, max_start_epoch); a method whose
    window moves passes this iteration's bound as max_start_epoch (default: the config's)."""
    upper = m.max_start_epoch if max_start_epoch is None else max_start_epoch
    eid = experts[int(torch.randint(len(experts), (1,), generator=gen))]
    s = int(torch.randint(m.min_start_epoch, upper, (1,), generator=gen))
    start, target = (to_device(t, device) for t in buffer.epochs(eid, s, s + m.expert_epochs))
    return Segment(eid, s, start, target)


def matching_loss(theta_n: torch.Tensor, segment: Segment) -> torch.Tensor:
    """||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2 (the paper's normalised distance)."""
    return torch.sum((theta_n - segment.target) ** 2) / torch.sum((segment.start - segment.target) ** 2)


def updates(res: MetaGrad, skip_loss_above: float | None = None) -> bool:
    """Whether an iteration's result updates the learned tensors: it must be finite and, with a threshold
    (DATM), its matching loss must not exceed it."""
    return res.is_finite() and (skip_loss_above is None or res.loss_value() <= skip_loss_above)


def outer_iteration(syn: Synthetic, student: FlatModel, segment: Segment, plan, dsa: DSA | None,
                    inner, min_lr: float, skip_loss_above: float | None = None) -> MetaGrad:
    """Student steps from segment.start on the plan's batches, matching loss, meta-gradient, and the
    optimiser steps of the learned tensors; a non-finite result (or, given skip_loss_above, a loss above it)
    is returned without updating anything. `inner` is the inner-loop config (engine, optimizer, memory_budget_mb).
    The host waits once, after the meta-gradient, for the loss and the finite check (MetaGrad.host)."""
    plan = plan_on_device(plan, syn.images.device)
    sharded = dist.world() > 1

    def step_loss(theta, learn, i):
        idx, aug_seed = plan[i]
        if not sharded:
            x = learn[0][idx]
            if dsa is not None:
                x = dsa(x, seed=aug_seed)
            return set_loss(student(theta, x), syn.targets(learn, idx))
        # data parallel: this rank's share of the batch, augmented as in the whole batch, its loss weighted by
        # its share; theta enters through dd.dist, so its gradient is summed over ranks, exactly under double backward
        rows = dist.share(len(idx))
        mine = idx[rows]
        x = learn[0][mine]
        if dsa is not None:
            x = dsa(x, seed=aug_seed, rows=rows, batch=len(idx))
        loss = set_loss(student(dist.replicated_to_local(theta), x), syn.targets(learn, mine))
        return loss * (len(mine) / len(idx))

    res = meta_gradient(inner.engine, step_loss, lambda theta_n: matching_loss(theta_n, segment), segment.start,
                        syn.learnables(), syn.syn_lr, len(plan), optimizer=inner.optimizer,
                        memory_budget_mb=inner.memory_budget_mb)
    if sharded:  # each rank holds the part of the images' (and labels') gradient its shares made
        dist.all_sum_(res.grads)
    if updates(res, skip_loss_above):
        syn.apply(res, min_lr)
    return res


@dataclass
class LoopState:
    """Everything of the loop a resume needs besides the learned tensors and the generator."""

    next_it: int = 0
    history: list = field(default_factory=list)  # {"iteration", "loss", "start_epoch"} and evaluation rows
    best: dict | None = None  # the set with the best selection-round mean (on method.select's split)
    last_evaluation: dict | None = None
    nonfinite_total: int = 0
    nonfinite_run: int = 0
    skipped_above: int = 0  # finite iterations whose loss exceeded method.skip_loss_above (DATM)
    iter_s: float = 0.0


def initial_synthetic(ctx: RunContext, buffer: Buffer, experts: list[int], student: FlatModel,
                      gen: torch.Generator) -> Synthetic:
    cfg, m = ctx.cfg, ctx.cfg.method
    images, labels = initial_images(ctx.data, cfg.ipc, m.pix_init, gen)
    images, labels = images.to(ctx.device), labels.to(ctx.device)
    logits = None
    if m.soft_labels:  # from an expert's logits on the initial images (its last epoch)
        (theta,) = buffer.epochs(experts[0], cfg.buffer.epochs)
        with torch.no_grad():
            logits = student(theta.to(ctx.device), images)
    return Synthetic.create(images, labels, m.lr_teacher, m, logits)


def evaluate_round(ctx: RunContext, syn: Synthetic, state: LoopState, it: int) -> None:
    """A selection round (round it + 1), scored on method.select's split: the best set so far is kept, as the
    reference code picks it (on the test split)."""
    images, labels = syn.images.detach(), syn.eval_labels()
    result = evaluation_round(ctx, state.history, images, labels, it, lr=syn.lr_value(), split=ctx.cfg.method.select)
    state.last_evaluation = result.as_dict()
    if state.best is None or result.mean > state.best["evaluation"]["mean"]:
        state.best = {"iteration": it, **final_state(syn), "evaluation": result.as_dict()}


def final_state(syn: Synthetic) -> dict:
    """The set as it stands, on the CPU: what a selection round keeps and `finish` reports."""
    return {"images": syn.images.detach().cpu().clone(), "labels": syn.eval_labels().cpu(),
            "lr": syn.syn_lr.detach().cpu().clone()}


def record_step(ctx: RunContext, state: LoopState, res: MetaGrad, segment: Segment, syn: Synthetic, it: int,
                seconds: float, skip_loss_above: float | None = None) -> None:
    """Log a finished iteration, or count a skipped non-finite one (and stop after too many in a row); a
    finite loss above skip_loss_above is logged and counted as skipped."""
    m = ctx.cfg.method
    if not res.is_finite():
        state.nonfinite_total += 1
        state.nonfinite_run += 1
        log.warning("iteration %d: non-finite matching loss or gradient; update skipped", it)
        if state.nonfinite_run >= m.max_nonfinite:
            raise DDError(f"the matching loss was not finite for {m.max_nonfinite} iterations in a row "
                          f"(last at iteration {it}); lower method.lr_img={m.lr_img} or method.lr_lr={m.lr_lr}")
        return
    state.nonfinite_run = 0
    loss, lr = res.loss_value(), syn.lr_value()
    state.iter_s += seconds
    row = {"iteration": it, "loss": loss, "start_epoch": segment.start_epoch, "lr": lr}
    if not updates(res, skip_loss_above):
        state.skipped_above += 1
        row["skipped"] = True
    state.history.append(row)
    ctx.tracker.log({"matching_loss": loss, "syn_lr": lr, "start_epoch": segment.start_epoch,
                     **({"skipped_above": state.skipped_above} if skip_loss_above is not None else {})}, step=it)


def paper_max(state: LoopState, split: str = "test") -> dict | None:
    """The reference code's reported figure: the best mean over the selection rounds, picked on the test split
    (None without rounds, or when the rounds scored on another split)."""
    if state.best is None or split != "test":
        return None
    best = state.best["evaluation"]
    rounds = sum(1 for h in state.history if "acc_mean" in h)
    return {"mean": best["mean"], "std": best["std"], "per_model": best["per_model"],
            "iteration": state.best["iteration"], "rounds": rounds,
            "note": "max over the evaluations made during distillation, picked on the test split"}


@dataclass
class Matching:
    """What a trajectory-matching method plugs into the shared loop, `match_trajectories`."""

    initial_synthetic: Callable  # (ctx, buffer, experts, student, gen) -> Synthetic
    start_epoch_bound: Callable[[int], int] | None = None  # iteration -> exclusive bound of s; None: max_start_epoch
    skip_loss_above: float | None = None  # leave everything unchanged when the matching loss exceeds this


@METHODS.register("mtt", schema=MTTConfig)
def distill(ctx: RunContext) -> SynSet:
    check_ipc(ctx.data, ctx.cfg.ipc)
    check_method(ctx.cfg.method, ctx.cfg.inner, ctx.cfg.buffer.epochs)
    check_selection(ctx.cfg)
    return match_trajectories(ctx, Matching(initial_synthetic))


def match_trajectories(ctx: RunContext, how: Matching) -> SynSet:
    """The loop every trajectory-matching method runs: experts, the initial set (or a resume), iterations with
    checkpoints and selection rounds, then `finish`. The method has checked its config before."""
    cfg, data, device, m = ctx.cfg, ctx.data, ctx.device, ctx.cfg.method
    t0 = time.perf_counter()
    experts = list(range(cfg.buffer.num_experts))  # exactly these, whatever else the folder holds
    buffer = build_buffer(cfg, data, device, ids=experts, progress=ctx.progress)
    expert_s = time.perf_counter() - t0
    expert_acc = sum(r["test_accuracy"] for r in buffer.records() if r["id"] in experts) / len(experts)
    log.info("buffer %s: %d experts, test accuracy %.2f%% mean", buffer.folder, len(experts), 100 * expert_acc)

    student = FlatModel(new_model(cfg.model, data).to(device, non_blocking=True))
    dsa = DSA(flip=data.flip) if m.dsa else None
    gen = seeds.generator("distill", cfg.seed)
    syn = how.initial_synthetic(ctx, buffer, experts, student, gen)
    check_world(len(syn.labels), m.batch_syn, student.module)
    state, ckpt = LoopState(), Checkpointer(ctx.out_dir / CHECKPOINT, run_digest(cfg))
    if should_resume(cfg, ckpt.path):
        state = ckpt.restore(syn, LoopState, gen)

    bar = tqdm(range(state.next_it, m.iterations + 1), desc=f"{m.name} {data.name} ipc={cfg.ipc}",
               disable=not ctx.progress, initial=state.next_it, total=m.iterations + 1)
    for it in bar:
        if it > 0 and it % m.checkpoint_every == 0 and it != state.next_it:
            ckpt.save(syn, state, it, gen)
        if due(m.eval_every, it) or (m.eval_every > 0 and it == m.iterations):
            evaluate_round(ctx, syn, state, it)
        if it == m.iterations:
            break
        t_it = time.perf_counter()
        bound = None if how.start_epoch_bound is None else how.start_epoch_bound(it)
        segment = draw_segment(buffer, experts, m, gen, device, bound)
        plan = plan_steps(len(syn.labels), m.batch_syn, m.syn_steps, gen)
        res = outer_iteration(syn, student, segment, plan, dsa, cfg.inner, m.min_lr, how.skip_loss_above)
        record_step(ctx, state, res, segment, syn, it, time.perf_counter() - t_it, how.skip_loss_above)
        best = {} if state.best is None else {"best": f"{100 * state.best['evaluation']['mean']:.1f}%"}
        last = state.history[-1] if state.history else {}
        if last.get("iteration") == it and "loss" in last:  # this iteration was logged (not skipped as non-finite)
            bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.4g}", **best)
    ckpt.save(syn, state, m.iterations, gen)
    skipped = {}
    if how.skip_loss_above is not None:
        skipped = {"skipped_above_threshold": state.skipped_above}
        log.info("%d of %d updates skipped: matching loss above %g", state.skipped_above, m.iterations,
                 how.skip_loss_above)
    return finish(ctx, syn, state, {"buffer": str(buffer.folder), "experts": len(experts),
                                    "expert_test_accuracy": expert_acc, **skipped}, expert_s)


def finish(ctx: RunContext, syn: Synthetic, state: LoopState, provenance: dict, expert_s: float) -> SynSet:
    """The best set re-evaluated on fresh models (round 0), the last state beside it, curves and timings.
    Without selection rounds (eval_every 0) the final set is the one reported."""
    cfg, m = ctx.cfg, ctx.cfg.method
    best = state.best or {"iteration": m.iterations, **final_state(syn), "evaluation": None}
    save_curves(state.history, ctx.out_dir / "curves.png", title=f"{m.name} {ctx.data.name} ipc={cfg.ipc}")
    # Best is picked on method.select's split (test: as the reference code does); the reported figure comes
    # from fresh models of round 0, which no selection round used, on the test split.
    final = evaluate_set(best["images"], best["labels"], ctx.data, cfg.model, cfg.eval, lr=float(best["lr"]),
                         seed=cfg.seed, round=0, device=ctx.device, progress=ctx.progress, desc="evaluate best")
    last_set = SynSet(images=syn.images.detach().cpu(), labels=syn.eval_labels().cpu(), lr=syn.syn_lr.detach().cpu(),
                      extra_meta={"iteration": m.iterations, "engine": cfg.inner.engine})
    if state.last_evaluation is not None:
        fields = EvalResult.__dataclass_fields__
        last_set.evaluation = EvalResult(**{k: v for k, v in state.last_evaluation.items() if k in fields})
    steps_done = sum(1 for h in state.history if "loss" in h)
    return SynSet(
        images=best["images"], labels=best["labels"], lr=best["lr"], evaluation=final, last=last_set,
        extra_meta={"best_iteration": best["iteration"], "selection_evaluation": best["evaluation"],
                    "paper_max": paper_max(state, m.select), "last_evaluation": state.last_evaluation,
                    "selection": selection_record(ctx, None if state.best is None else m.select, state.history,
                                                  best["iteration"]),
                    "nonfinite_skipped": state.nonfinite_total, "engine": cfg.inner.engine, **provenance},
        timings={"experts_s": expert_s, "distill_s": state.iter_s, "s_per_iteration": state.iter_s / max(1, steps_done)},
    )
