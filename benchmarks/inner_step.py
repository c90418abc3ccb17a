"""One inner step of trajectory matching, ddlab's way beside the reference code's way, and its profile.

Both variants run the same unrolled loop on the same data: `--steps` student steps on the synthetic
set (the whole set per step by default, as MTT with batch_syn null), each with one DSA transform
drawn from the same seed, the step theta_{i+1} = theta_i - lr * grad (graph kept), then the
matching loss at theta_N and its gradient w.r.t. the images and the lr. They differ only in how
the network is run on a flat parameter vector:

- ddlab:     `dd.image.methods.mtt`'s step (FlatModel, the set loss, dd.data.DSA), timed through
             `dd.inner.meta_gradient(engine="unroll")`.
- reference: the reference code's pattern, rewritten here: the module's parameters are deleted and
             replaced by views of the flat vector (set as plain attributes) before each forward,
             then F.cross_entropy, torch.autograd.grad(create_graph=True), and backward() at the end.

The two gradients must agree (printed), so the timing compares equal work. `--profile` adds the
torch profiler's table (self CPU time) of one ddlab iteration.

    .venv/bin/python benchmarks/inner_step.py                      # CIFAR shape, width 128, ipc 10, 10 steps
    .venv/bin/python benchmarks/inner_step.py --steps 2 --profile --repeats 1
"""

from __future__ import annotations

import argparse
import time

try:
    from . import common
except ImportError:
    import common


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="inner steps per iteration (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="timed iterations per variant, interleaved (default 3)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shape", type=common.shape, default=(3, 32, 32), help="C,H,W (default 3,32,32)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=None, help="default: 3 at 32 px (as meta_grad.py)")
    p.add_argument("--no-dsa", dest="dsa", action="store_false")
    p.add_argument("--profile", action="store_true", help="print the profiler table of one ddlab iteration")
    p.add_argument("--rows", type=int, default=18, help="profiler rows (default 18)")
    common.add_device_args(p)
    common.add_output_args(p, "inner_step")
    return p


def build_problem(args, torch):
    from dd.data import DSA
    from dd.image.train import fresh_model
    from dd.models import FlatModel

    gen = torch.Generator().manual_seed(args.seed)
    device = torch.device(args.device)
    module = fresh_model(common.convnet_config(args), common.shape_dataset(args.shape, args.classes), args.seed, device)
    n = args.ipc * args.classes
    images = torch.randn(n, *args.shape, generator=gen).to(device)
    labels = torch.arange(args.classes).repeat_interleave(args.ipc).to(device)
    student = FlatModel(module)
    start = student.flatten().detach()
    target = start + 0.01 * torch.randn(start.shape, generator=gen).to(device)
    seeds = [int(s) for s in torch.randint(2**31 - 1, (args.steps,), generator=gen)]
    return module, student, images, labels, start, target, seeds, DSA() if args.dsa else None


def ddlab_iteration(torch, student, images, labels, start, target, seeds, dsa, lr0: float):
    from dd.image.methods.mtt import Segment, matching_loss
    from dd.image.train import set_loss
    from dd.inner import meta_gradient

    lr = torch.tensor(lr0, requires_grad=True)
    x0 = images.detach().requires_grad_(True)

    def step_loss(theta, learn, i):
        x = learn[0]
        if dsa is not None:
            x = dsa(x, seed=seeds[i])
        return set_loss(student(theta, x), labels)

    segment = Segment(expert=0, start_epoch=0, start=start, target=target)
    res = meta_gradient("unroll", step_loss, lambda t: matching_loss(t, segment), start, [x0], lr, len(seeds))
    return res.grads[0], res.lr_grad


class ReparamNet:
    """The reference code's way of running a module on a flat vector: parameters become views."""

    def __init__(self, module):
        self.module = module
        self.slots = [(m, name, p.shape, p.numel()) for m in module.modules()
                      for name, p in list(m.named_parameters(recurse=False))]
        for m, name, _, _ in self.slots:
            delattr(m, name)

    def __call__(self, flat, x):
        offset = 0
        for m, name, shape, numel in self.slots:
            setattr(m, name, flat[offset : offset + numel].view(shape))
            offset += numel
        return self.module(x)


def reference_iteration(torch, net, images, labels, start, target, seeds, dsa, lr0: float):
    import torch.nn.functional as F

    lr = torch.tensor(lr0, requires_grad=True)
    x0 = images.detach().requires_grad_(True)
    params = [start.detach().requires_grad_(True)]
    for i in range(len(seeds)):
        x = x0 if dsa is None else dsa(x0, seed=seeds[i])
        loss = F.cross_entropy(net(params[-1], x), labels)
        (g,) = torch.autograd.grad(loss, params[-1], create_graph=True)
        params.append(params[-1] - lr * g)
    # the reference's normalised parameter distance
    (F.mse_loss(params[-1], target, reduction="sum") / F.mse_loss(start, target, reduction="sum")).backward()
    return x0.grad, lr.grad


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.quick = False
    common.require_positive(args, ("steps", "repeats", "ipc", "classes", "width"), ("depth",))
    common.output_paths(args, "inner_step")
    torch = common.setup_torch(args.device, args.threads)
    import copy

    load, t_start = common.begin(args)
    module, student, images, labels, start, target, seeds, dsa = build_problem(args, torch)
    net = ReparamNet(copy.deepcopy(module))
    run = {
        "ddlab": lambda: ddlab_iteration(torch, student, images, labels, start, target, seeds, dsa, 0.01),
        "reference": lambda: reference_iteration(torch, net, images, labels, start, target, seeds, dsa, 0.01),
    }
    first = {name: fn() for name, fn in run.items()}  # warm-up, and the gradients to compare
    diff = max(float((first["ddlab"][k] - first["reference"][k]).abs().max()) for k in range(2))
    scale = float(first["reference"][0].abs().max())
    seconds = {name: [] for name in run}
    order = list(run)
    for r in range(args.repeats):  # interleaved: a change in machine load hits both variants
        for name in order if r % 2 == 0 else order[::-1]:  # ABBA: neither variant always runs first
            seconds[name].append(common.timed(args.device, run[name])[1])
    rows = []
    for name, s in seconds.items():
        best = min(s)
        rows.append({"variant": name, "steps": args.steps, "s_per_iter": best, "s_per_step": best / args.steps,
                     "s_iters": s, "ipc": args.ipc, "shape": list(args.shape), "width": args.width,
                     "dsa": args.dsa, "device": args.device})
    ref = rows[1]["s_per_iter"]
    body = [[r["variant"], f"{r['s_per_iter']:.3f}", f"{r['s_per_step']:.3f}", f"{r['s_per_iter'] / ref:.3f}x"]
            for r in rows]
    notes = [f"min over {args.repeats} interleaved iterations (ABBA order) of {args.steps} steps; max |grad difference| "
             f"{diff:.2e} (largest |grad| {scale:.2e}){common.timing_note(args.device)}"]
    table = common.render_table(f"one unrolled inner step: ipc {args.ipc}, shape {common.shape_text(args.shape)}, "
                                f"width {args.width}, dsa {args.dsa}, {args.device}",
                                ["variant", "s/iter", "s/step", "vs reference"], body, notes)
    if args.profile:
        table += "\n\nprofile of one ddlab iteration (self CPU time):\n" + common.profile_table(run["ddlab"], args.rows)
    meta = common.run_meta(args, time.perf_counter() - t_start, load, grad_max_abs_diff=diff)
    return common.finish(args, rows, table, common.wall_line(time.perf_counter() - t_start, None), meta, plot)


def plot(rows: list[dict], args, path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([r["variant"] for r in rows], [r["s_per_step"] for r in rows])
    ax.set_ylabel("seconds per inner step")
    common.save_figure(fig, path, f"unrolled inner step, {args.steps} steps, {args.device}", [])


if __name__ == "__main__":
    common.ensure_root_on_path()
    raise SystemExit(main())
