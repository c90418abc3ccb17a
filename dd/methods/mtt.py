"""Matching Training Trajectories (Cazenavette et al., CVPR 2022).

Each iteration draws an expert and a start epoch s, puts a student at the
expert's parameters theta_s, trains it for `syn_steps` SGD steps on
(augmented) synthetic minibatches with the learned lr, and minimises
    ||theta_N - theta*_{s+M}||^2 / ||theta*_s - theta*_{s+M}||^2
over the images (and the lr, and optionally soft labels). The meta-gradient
comes from the configured engine in dd.inner; `reverse` (default) is exact with
activation memory that does not grow with syn_steps.

All randomness of the distillation comes from one torch.Generator whose state
is checkpointed, so a resumed run reaches exactly the images of an
uninterrupted one (on CPU).
"""

import logging
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dd.checkpoint import CHECKPOINT, load_checkpoint, run_digest
from dd.data import DSA
from dd.errors import DDError
from dd.evaluate import EvalResult, evaluate_set, new_model, set_loss
from dd.experts import build_buffer
from dd.fsutil import write_file
from dd.inner import ENGINES, meta_gradient
from dd.methods.base import RunContext, SynSet
from dd.methods.coreset import check_ipc
from dd.models import FlatModel
from dd.viz import save_curves, save_grid

log = logging.getLogger(__name__)


def check_method(m, inner, buffer_epochs: int) -> None:
    positive = {"iterations": m.iterations + 1, "syn_steps": m.syn_steps, "expert_epochs": m.expert_epochs,
                "lr_img": m.lr_img, "lr_teacher": m.lr_teacher, "eval_every": m.eval_every,
                "checkpoint_every": m.checkpoint_every, "max_nonfinite": m.max_nonfinite, "min_lr": m.min_lr}
    for key, value in positive.items():
        if not value > 0:
            raise DDError(f"method.{key}={value} is not allowed; it must be positive")
    if m.lr_lr < 0 or m.lr_label < 0:
        raise DDError(f"method.lr_lr={m.lr_lr}, method.lr_label={m.lr_label}: they must be >= 0 (0 freezes that tensor)")
    if not 0 <= m.min_start_epoch < m.max_start_epoch:
        raise DDError(f"method.min_start_epoch={m.min_start_epoch}, max_start_epoch={m.max_start_epoch}: "
                      "need 0 <= min_start_epoch < max_start_epoch")
    if m.max_start_epoch - 1 + m.expert_epochs > buffer_epochs:
        raise DDError(f"max_start_epoch={m.max_start_epoch} + expert_epochs={m.expert_epochs} needs experts of at least "
                      f"{m.max_start_epoch - 1 + m.expert_epochs} epochs, but buffer.epochs={buffer_epochs}")
    if m.pix_init not in ("real", "noise"):
        raise DDError(f"method.pix_init '{m.pix_init}' is unknown; choose one of: real, noise")
    if m.batch_syn is not None and m.batch_syn <= 0:
        raise DDError(f"method.batch_syn={m.batch_syn} is not allowed; give a positive number or null (the whole set)")
    if inner.engine not in ENGINES:
        raise DDError(f"inner.engine '{inner.engine}' is unknown; choose one of: {', '.join(ENGINES)}")


def initial_images(data, ipc: int, how: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc images per class, grouped by class: real samples, or Gaussian noise."""
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    if how == "noise":
        return torch.randn(len(labels), *data.train_x.shape[1:], generator=gen), labels
    picks = [idx[torch.randperm(len(idx), generator=gen)[:ipc]]
             for idx in (data.indices_of_class(c) for c in range(data.num_classes))]
    return data.train_x[torch.cat(picks)].clone(), labels


def plan_steps(n: int, batch: int | None, steps: int, gen: torch.Generator) -> list[tuple[torch.Tensor, int]]:
    """(minibatch indices, augmentation seed) for each student step: shuffled passes over the set."""
    batch = n if batch is None else min(batch, n)
    chunks: list[torch.Tensor] = []
    plan = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(n, generator=gen).split(batch))
        plan.append((chunks.pop(0), int(torch.randint(2**31 - 1, (1,), generator=gen))))
    return plan




def distill(ctx: RunContext) -> SynSet:
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    m = cfg.method
    check_ipc(data, cfg.ipc)
    check_method(m, cfg.inner, cfg.buffer.epochs)

    t0 = time.perf_counter()
    buffer = build_buffer(cfg, data, device, ids=list(range(cfg.buffer.num_experts)), progress=ctx.progress)
    experts = buffer.finished()
    expert_s = time.perf_counter() - t0
    acc = [r["test_accuracy"] for r in buffer.records()]
    log.info("buffer %s: %d experts, test accuracy %.2f%% mean", buffer.folder, len(experts), 100 * sum(acc) / len(acc))

    student = FlatModel(new_model(cfg.model, data).to(device))
    dsa = DSA(flip=data.flip) if m.dsa else None
    gen = torch.Generator().manual_seed(cfg.seed)
    images, labels = initial_images(data, cfg.ipc, m.pix_init, gen)
    images = images.to(device).requires_grad_(True)
    labels = labels.to(device)
    syn_lr = torch.tensor(float(m.lr_teacher), device=device, requires_grad=True)
    learnables = [images]
    opt_img = torch.optim.SGD([images], lr=m.lr_img, momentum=m.momentum)
    opt_lr = torch.optim.SGD([syn_lr], lr=m.lr_lr, momentum=m.momentum)
    label_logits, opt_label = None, None
    if m.soft_labels:
        # initialise from an expert's logits on the initial images (its last epoch)
        (theta,) = buffer.epochs(experts[0], cfg.buffer.epochs)
        with torch.no_grad():
            label_logits = student(theta.to(device), images).detach().requires_grad_(True)
        learnables.append(label_logits)
        opt_label = torch.optim.SGD([label_logits], lr=m.lr_label, momentum=m.momentum)

    def eval_labels():
        return labels if label_logits is None else F.softmax(label_logits.detach(), dim=1)

    state = {"next_it": 0, "history": [], "best": None, "last_evaluation": None, "nonfinite_total": 0, "nonfinite_run": 0, "iter_s": 0.0}
    ckpt_path = ctx.out_dir / CHECKPOINT
    digest = run_digest(cfg)
    if cfg.resume:
        saved = load_checkpoint(ckpt_path, digest, device)
        with torch.no_grad():
            images.copy_(saved["images"])
            syn_lr.copy_(saved["syn_lr"])
            if label_logits is not None:
                label_logits.copy_(saved["label_logits"])
        opt_img.load_state_dict(saved["opt_img"])
        opt_lr.load_state_dict(saved["opt_lr"])
        if opt_label is not None:
            opt_label.load_state_dict(saved["opt_label"])
        gen.set_state(saved["gen_state"])
        state = saved["state"]
        log.info("resumed from %s at iteration %d", ckpt_path, state["next_it"])

    def save_checkpoint(next_it: int) -> None:
        state["next_it"] = next_it
        blob = {"digest": digest, "images": images.detach(), "syn_lr": syn_lr.detach(),
                "label_logits": None if label_logits is None else label_logits.detach(),
                "opt_img": opt_img.state_dict(), "opt_lr": opt_lr.state_dict(),
                "opt_label": None if opt_label is None else opt_label.state_dict(),
                "gen_state": gen.get_state(), "state": state}
        write_file(ckpt_path, lambda p: torch.save(blob, p))

    def evaluate(it: int) -> None:
        result = evaluate_set(images.detach(), eval_labels(), data, cfg.model, cfg.eval, lr=float(syn_lr.detach()),
                              seed=cfg.seed, device=device, progress=False)
        state["history"].append({"iteration": it, "acc_mean": result.mean, "acc_std": result.std,
                                 "lr": float(syn_lr.detach())})
        ctx.tracker.log({"eval/acc_mean": result.mean, "eval/acc_std": result.std}, step=it)
        state["last_evaluation"] = result.as_dict()
        best = state["best"]
        if best is None or result.mean > best["evaluation"]["mean"]:
            state["best"] = {"iteration": it, "images": images.detach().cpu().clone(), "labels": eval_labels().cpu(),
                             "lr": syn_lr.detach().cpu().clone(), "evaluation": result.as_dict()}
        grid = ctx.out_dir / "progress" / f"iter_{it:06d}.png"
        save_grid(data.to_pixels(images.detach().cpu()), eval_labels().cpu(), data.class_names, grid,
                  title=f"iteration {it}: {result}")
        ctx.tracker.log_image("grid", grid, step=it)
        log.info("iteration %d: %s (lr %.4g)", it, result, float(syn_lr.detach()))

    bar = tqdm(range(state["next_it"], m.iterations + 1), desc=f"mtt {data.name} ipc={cfg.ipc}",
               disable=not ctx.progress, initial=state["next_it"], total=m.iterations + 1)
    for it in bar:
        if it > 0 and it % m.checkpoint_every == 0 and it != state["next_it"]:
            save_checkpoint(it)
        if it % m.eval_every == 0 or it == m.iterations:
            evaluate(it)
            bar.set_postfix(best=f"{100 * state['best']['evaluation']['mean']:.1f}%")
        if it == m.iterations:
            break
        t_it = time.perf_counter()
        eid = experts[int(torch.randint(len(experts), (1,), generator=gen))]
        start = int(torch.randint(m.min_start_epoch, m.max_start_epoch, (1,), generator=gen))
        theta_start, theta_target = (t.to(device) for t in buffer.epochs(eid, start, start + m.expert_epochs))
        plan = plan_steps(len(labels), m.batch_syn, m.syn_steps, gen)
        scale = torch.sum((theta_start - theta_target) ** 2)

        def step_loss(theta, learn, i, plan=plan):
            idx, seed = plan[i]
            x = learn[0][idx]
            if dsa is not None:
                x = dsa(x, seed=seed)
            y = labels[idx] if label_logits is None else F.softmax(learn[1][idx], dim=1)
            return set_loss(student(theta, x), y)

        def outer(theta_n, theta_target=theta_target, scale=scale):
            return torch.sum((theta_n - theta_target) ** 2) / scale

        res = meta_gradient(cfg.inner.engine, step_loss, outer, theta_start, learnables, syn_lr, m.syn_steps,
                            optimizer=cfg.inner.optimizer)
        if not res.is_finite():
            state["nonfinite_total"] += 1
            state["nonfinite_run"] += 1
            log.warning("iteration %d: non-finite matching loss or gradient; update skipped", it)
            if state["nonfinite_run"] >= m.max_nonfinite:
                raise DDError(f"the matching loss was not finite for {m.max_nonfinite} iterations in a row "
                              f"(last at iteration {it}); lower method.lr_img={m.lr_img} or method.lr_lr={m.lr_lr}")
            continue
        state["nonfinite_run"] = 0
        images.grad, syn_lr.grad = res.grads[0], res.lr_grad
        opt_img.step()
        opt_lr.step()
        if opt_label is not None:
            label_logits.grad = res.grads[1]
            opt_label.step()
        with torch.no_grad():
            syn_lr.clamp_(min=m.min_lr)
        loss = float(res.loss)
        state["iter_s"] += time.perf_counter() - t_it
        state["history"].append({"iteration": it, "loss": loss, "start_epoch": start})
        ctx.tracker.log({"matching_loss": loss, "syn_lr": float(syn_lr.detach()), "start_epoch": start}, step=it)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{float(syn_lr.detach()):.4g}",
                        best=f"{100 * state['best']['evaluation']['mean']:.1f}%")
    save_checkpoint(m.iterations)

    best = state["best"]
    save_curves(state["history"], ctx.out_dir / "curves.png", title=f"mtt {data.name} ipc={cfg.ipc}")
    last = state["last_evaluation"]
    steps_done = sum(1 for h in state["history"] if "loss" in h)
    # Best is picked on the test split (as the reference code does); re-evaluate it with fresh
    # model seeds so the reported figure is not also the lucky draw of the selection round.
    final = evaluate_set(best["images"], best["labels"], data, cfg.model, cfg.eval, lr=float(best["lr"]),
                         seed=cfg.seed + 7919, device=device, progress=ctx.progress, desc="evaluate best")
    last_set = SynSet(images=images.detach().cpu(), labels=eval_labels().cpu(), lr=syn_lr.detach().cpu(),
                      extra_meta={"iteration": m.iterations, "engine": cfg.inner.engine})
    if last is not None:
        last_set.evaluation = EvalResult(**{k: v for k, v in last.items() if k in EvalResult.__dataclass_fields__})
    return SynSet(
        images=best["images"], labels=best["labels"], lr=best["lr"], evaluation=final, last=last_set,
        extra_meta={"best_iteration": best["iteration"], "selection_evaluation": best["evaluation"],
                    "last_evaluation": last, "nonfinite_skipped": state["nonfinite_total"],
                    "buffer": str(buffer.folder), "experts": len(experts),
                    "expert_test_accuracy": sum(acc) / len(acc), "engine": cfg.inner.engine},
        timings={"experts_s": expert_s, "distill_s": state["iter_s"],
                 "s_per_iteration": state["iter_s"] / max(1, steps_done)},
    )
