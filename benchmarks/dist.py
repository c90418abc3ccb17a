"""Speed-up of one job over several processes (dd.dist): the same work with 1 and with N ranks.

Two workloads, each timed in a torchrun job of 1 process and of N processes (gloo on the CPU, one
thread per process unless --threads says otherwise):
- eval: the evaluation protocol (dd.image.evaluate.evaluate_set) of K fresh models on a set of real
  digits images (IPC --ipc), --epochs epochs each, the models dealt round-robin to the ranks;
- mtt:  one trajectory-matching outer iteration (dd.image.methods.mtt.outer_iteration) at the CIFAR
  shape: IPC 10 CIFAR-like images, ConvNet-3 width 128 (instance norm), batch_syn 100,
  --syn-steps student steps with DSA, engine unroll; each student step's batch shared out over ranks.
  Timed over --iters iterations after one untimed warm-up.

Every rank's results are checked against the 1-process job's. Evaluation: the per-model accuracies
must be equal (models are the same whatever rank trains them). MTT: the images' meta-gradient of the
first (warm-up) iteration, taken from the same images in every job, must be as close to the exact
(float64) gradient of that iteration as one process's float32 gradient is (within 2x): float32 itself
is ~1% off the exact meta-gradient at this shape (10 unrolled steps, DSA), and summing the ranks' parts
in another order rounds differently. The expert segment is real: where 40 SGD steps on the random
CIFAR-like data take a fresh network. (tests/core/test_dist.py checks exactness in float64 to 1e-10.) The table gives seconds and the speed-up;
rows go to --json (default benchmarks/results/dist.json).

    python benchmarks/dist.py                      # 1 vs 2 processes, both workloads
    python benchmarks/dist.py --ranks 1,2 --workload mtt --iters 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__:
    from . import common
else:  # run as a script: benchmarks/ is sys.path[0]
    import common

WORKLOADS = ("eval", "mtt")


def eval_workload(args) -> dict:
    import torch
    from omegaconf import OmegaConf

    from dd.data import load_image_dataset
    from dd.image.evaluate import EvalConfig, evaluate_set
    from dd.models.factory import ModelConfig

    data = load_image_dataset("digits")
    gen = torch.Generator().manual_seed(args.seed)
    picks = torch.cat([data.indices_of_class(c)[torch.randperm(len(data.indices_of_class(c)), generator=gen)[:args.ipc]]
                       for c in range(data.num_classes)])
    model = OmegaConf.structured(ModelConfig(name="convnet"))
    cfg = OmegaConf.structured(EvalConfig(num_models=args.models, epochs=args.epochs, batched=False, workers=1))
    start = time.perf_counter()
    result = evaluate_set(data.train_x[picks], data.train_y[picks], data, model, cfg, seed=args.seed, device="cpu",
                          progress=False)
    return {"seconds": time.perf_counter() - start, "per_model": result.per_model}


def expert_segment(model, data, seed: int, steps: int = 40):
    """(start, target): a fresh ConvNet and where `steps` SGD steps on batches of 256 real images take it
    (lr 0.01, as an expert epoch moves), so the matching loss has a real direction to follow."""
    import torch

    from dd.image.train import fresh_model, set_loss
    from dd.models import FlatModel

    net = fresh_model(model, data, seed, "cpu")
    start = FlatModel(net).flatten().detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        idx = torch.randint(len(data.train_x), (256,), generator=gen)
        loss = set_loss(net(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return start, FlatModel(net).flatten().detach().clone()


def mtt_workload(args, dtype=None) -> dict:
    import torch
    from omegaconf import OmegaConf

    from dd.data import DSA
    from dd.image.methods.mtt import MTTConfig, Segment, Synthetic, outer_iteration, plan_steps
    from dd.image.train import fresh_model
    from dd.inner.engines import InnerConfig
    from dd.models import FlatModel
    from dd.models.factory import ModelConfig

    dtype = dtype or torch.float32
    data, _ = common.random_image_dataset(1000, 10, (3, 32, 32), seed=args.seed)
    model = OmegaConf.structured(ModelConfig(name="convnet", width=128, depth=3, norm="instance"))
    start, target = expert_segment(model, data, args.seed)
    student = FlatModel(fresh_model(model, data, args.seed, "cpu").to(dtype))
    n = 10 * args.mtt_ipc
    syn = Synthetic.create(data.train_x[:n].to(dtype), data.train_y[:n], 0.01, MTTConfig())
    segment = Segment(0, 0, start.to(dtype), target.to(dtype))
    gen = torch.Generator().manual_seed(args.seed + 2)
    inner = InnerConfig(engine="unroll")

    def one():
        plan = plan_steps(len(syn.labels), 100, args.syn_steps, gen)
        return outer_iteration(syn, student, segment, plan, DSA(), inner, min_lr=1e-6)

    first = one().grads[0].double().clone()  # the warm-up (not timed): its gradient, from the same images in every job
    if dtype == torch.float64:
        return {"images_grad": first}
    start_t = time.perf_counter()
    for _ in range(args.iters):
        one()
    seconds = (time.perf_counter() - start_t) / args.iters
    out = {"seconds": seconds, "images_grad": first}
    if args.float64_reference:  # the exact gradient of the same first iteration, for float32's own error
        out["images_grad_float64"] = mtt_workload(args, torch.float64)["images_grad"]
    return out


def child(args) -> None:
    """One rank of a torchrun job: run the workload, rank 0 saves what it measured."""
    import torch

    common.setup_torch("cpu", args.threads)
    from dd import dist

    dist.init("cpu")
    dist.barrier()
    out = (eval_workload if args.workload == ["eval"] else mtt_workload)(args)
    dist.barrier()
    if dist.is_main():
        torch.save(out, args.out)
    dist.shutdown()


def launch(args, workload: str, ranks: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.pt"
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                __file__, "--child", "--workload", workload, "--out", str(out), "--threads", str(args.threads),
                "--models", str(args.models), "--epochs", str(args.epochs), "--ipc", str(args.ipc),
                "--mtt-ipc", str(args.mtt_ipc), "--syn-steps", str(args.syn_steps), "--iters", str(args.iters),
                "--seed", str(args.seed)] + (["--float64-reference"] if workload == "mtt" and ranks == args.ranks[0] else [])
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads or 1))
        print(f"[{workload}] {ranks} process(es) ...", file=sys.stderr, flush=True)
        subprocess.run(argv, check=True, env=env)
        return torch.load(out, weights_only=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=common.int_list, default=[1, 2], help="process counts, the first is the baseline")
    p.add_argument("--workload", type=common.choice_list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--models", type=int, default=10, help="eval: K models (default 10)")
    p.add_argument("--epochs", type=int, default=300, help="eval: epochs per model (default 300, eval's default)")
    p.add_argument("--ipc", type=int, default=10, help="eval: real digits images per class (default 10)")
    p.add_argument("--mtt-ipc", type=int, default=10, help="mtt: images per class (default 10)")
    p.add_argument("--syn-steps", type=int, default=10, help="mtt: student steps per iteration (default 10)")
    p.add_argument("--iters", type=int, default=2, help="mtt: timed iterations (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float64-reference", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "dist.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    common.ensure_root_on_path()
    if args.child:
        child(args)
        return 0
    load_start, t0 = common.loadavg(), time.perf_counter()
    rows = []
    for workload in args.workload:
        base = None
        for ranks in args.ranks:
            out = launch(args, workload, ranks)
            row = {"workload": workload, "ranks": ranks, "threads_per_rank": args.threads,
                   "seconds": round(out["seconds"], 3)}
            if base is None:
                base = out
            row["speedup"] = round(base["seconds"] / out["seconds"], 3)
            if workload == "eval":
                row["same_results"] = out["per_model"] == base["per_model"]
            else:
                def rel(a, b):
                    return float((a - b).norm() / b.norm())

                exact = base["images_grad_float64"]
                row["images_grad_rel_err_vs_first"] = rel(out["images_grad"], base["images_grad"])
                row["images_grad_rel_err_vs_float64"] = rel(out["images_grad"], exact)
                row["float32_own_rel_err"] = rel(base["images_grad"], exact)
                # as close to the exact gradient as one process is (float32 rounds differently per sum order)
                row["same_results"] = row["images_grad_rel_err_vs_float64"] <= 2 * row["float32_own_rel_err"] + 1e-7
            rows.append(row)
    what = {"eval": f"evaluation: K={args.models} digits models, IPC {args.ipc}, {args.epochs} epochs (s per evaluation)",
            "mtt": f"MTT outer iteration: CIFAR shape, IPC {args.mtt_ipc}, width 128, batch_syn 100, "
                   f"{args.syn_steps} steps, DSA, unroll (s per iteration)"}
    body = [[r["workload"], str(r["ranks"]), f"{r['seconds']:.2f}", f"{r['speedup']:.2f}x",
             "yes" if r["same_results"] else "NO"] for r in rows]
    notes = [f"  {k}: {v}" for k, v in what.items() if k in args.workload]
    notes.append(f"  {args.threads} thread(s) per process; load average at start {common.fmt_load(load_start)}")
    table = common.render_table("one job over several processes (gloo, CPU)",
                                ["workload", "processes", "seconds", "speed-up", "same results"], body, notes)
    print(table)
    meta = {"argv": sys.argv[1:], "cpu_count": os.cpu_count(), "loadavg_start": load_start,
            "loadavg_end": common.loadavg(), "wall_s": round(time.perf_counter() - t0, 1),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    common.write_json(args.json, meta, rows)
    print(json.dumps({"json": str(args.json)}))
    return 0 if all(r["same_results"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
