"""Time and memory of trajectory-matching outer iterations for each meta-gradient engine.

One outer iteration is the MTT module's own `dd.image.methods.mtt.outer_iteration` (the function
`distill` calls): the student-step plan (`plan_steps`), the meta-gradient of the matching loss
through the configured engine, and the image/lr optimiser steps (`Synthetic`, with MTTConfig's
defaults). The data are random `torch.randn` images with balanced hard labels, the
student is a randomly initialised ConvNet (instance norm, ReLU, avg pool), the expert start is
that random init and the expert target the init plus small Gaussian noise. Everything is seeded.

For each (engine, syn_steps) the script prints one JSON line
    {"engine", "syn_steps", "ipc", "shape", "width", "batch_syn", "device", "memory_budget_mb",
     "s_per_iter", "peak_mem_mb", "mem_kind", ...}
(memory_budget_mb: --memory-budget-mb, the `auto` engine's budget; null when none was given)
(a failed configuration, out of memory or past --timeout, gets "error" and null numbers),
then a table (engine x syn_steps: s/iter, peak memory, time relative to unroll at the same
syn_steps, peak memory relative to unroll, and each engine's memory ratio syn_steps_max /
syn_steps_min). All rows go to
--json (default benchmarks/results/meta_grad_<device>.json, or meta_grad_<device>_quick.json
with --quick) and a PNG of peak memory and s/iter against syn_steps to --plot (default: the
json path with .png).

Memory:
- cuda: torch.cuda.max_memory_allocated() over the timed iterations, after
  reset_peak_memory_stats() (mem_kind "cuda_max_allocated"; includes the data and the model).
- cpu: the peak RSS is process-wide and only grows, so by default (--isolate) every
  configuration runs in a fresh child process (this script with a hidden --child flag) and
  reports the peak RSS during the timed iterations (getrusage ru_maxrss, with the kernel's
  high-water mark reset after warm-up where /proc/self/clear_refs allows it) minus the RSS
  just before the first iteration, measured after model/data setup
  (mem_kind "cpu_peak_rss_delta"). A CPU child also gets an address-space limit
  (--mem-limit-mb, default 80% of MemAvailable) so an oversized configuration fails with an
  out-of-memory error instead of waking the kernel's OOM killer.

Usage (from the repository root):
    python benchmarks/meta_grad.py --quick
    python benchmarks/meta_grad.py --engine reverse,unroll --syn-steps 10,20,40,80 --ipc 10 --shape 3,32,32 --width 128 --iters 2
    python benchmarks/meta_grad.py --engine unroll,auto --memory-budget-mb 1024 --syn-steps 10,40,80
    python benchmarks/meta_grad.py --device cuda --iters 5
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__:
    from . import common
else:  # run as a script: benchmarks/ is sys.path[0]
    import common

TARGET_NOISE = 0.01  # expert target = start + TARGET_NOISE * N(0, 1)


def engines() -> tuple[str, ...]:
    """dd.inner.ENGINES, the engines `--engine` chooses from."""
    common.ensure_root_on_path()
    from dd.inner import ENGINES

    return ENGINES


QUICK = {"shape": (1, 16, 16), "width": 32, "ipc": 10, "syn_steps": [10, 20, 40], "iters": 2}
DEFAULTS = {"shape": (3, 32, 32), "width": 128, "ipc": 10, "syn_steps": [10, 20, 40, 80], "iters": 3}

MEM_KIND = {"cuda": "cuda_max_allocated", "cpu": "cpu_peak_rss_delta"}


# ----------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time trajectory-matching outer iterations per meta-gradient engine (see module docstring).",
    )
    p.add_argument("--engine", type=common.choice_list(engines()), default=None, help="one engine or a comma list (default: all of dd.inner.ENGINES)")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="the auto engine's memory budget in MB (default: none, i.e. half the free memory)")
    p.add_argument("--syn-steps", type=common.int_list, default=None,
                   help="one or a comma list of inner steps (default 10,20,40,80; --quick: 10,20,40)")
    p.add_argument("--ipc", type=int, default=None, help="synthetic images per class (default 10)")
    p.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    p.add_argument("--shape", type=common.shape, default=None, help="C,H,W (default 3,32,32; --quick: 1,16,16)")
    p.add_argument("--width", type=int, default=None, help="ConvNet width (default 128; --quick: 32)")
    p.add_argument("--depth", type=int, default=None, help="ConvNet depth (default: auto from the image size)")
    p.add_argument("--batch-syn", type=int, default=None, help="images per student step (default: all)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 3; --quick: 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before the timed ones (default 1)")
    p.add_argument("--dsa", action=argparse.BooleanOptionalAction, default=True, help="DSA augmentation per step, as MTT (default on)")
    common.add_device_args(p)
    common.add_output_args(p, "meta_grad")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one fresh subprocess per configuration (default: on for cpu, off for cuda)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration, child start-up included (default 600)")
    p.add_argument("--mem-limit-mb", type=int, default=None,
                   help="cpu children: address-space limit above their setup (default 80%% of MemAvailable; 0: none)")
    p.add_argument("--quick", action="store_true",
                   help="small CPU run: shape 1,16,16, width 32, ipc 10, syn-steps 10,20,40, iters 2")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from --quick or the defaults; explicit options always win."""
    if args.engine is None:
        args.engine = list(engines())
    common.fill_defaults(args, QUICK if args.quick else DEFAULTS)
    args.syn_steps = sorted(set(args.syn_steps))
    common.require_positive(args, ("ipc", "classes", "width", "iters"), ("depth", "batch_syn"))
    if args.warmup < 0:
        raise SystemExit(f"--warmup={args.warmup}: must be >= 0")
    if args.isolate is None:
        args.isolate = args.device == "cpu"
    if args.mem_limit_mb is None:
        available = common.meminfo_mb("MemAvailable")
        args.mem_limit_mb = int(0.8 * available) if (args.device == "cpu" and available) else 0
    common.output_paths(args, "meta_grad")
    return args


# ----------------------------------------------------------------------------- one configuration


def _base_row(args, engine: str, syn_steps: int) -> dict:
    n = args.ipc * args.classes
    return {
        "engine": engine, "syn_steps": syn_steps, "ipc": args.ipc, "shape": list(args.shape), "width": args.width,
        "batch_syn": n if args.batch_syn is None else min(args.batch_syn, n), "device": args.device,
        "memory_budget_mb": args.memory_budget_mb,
        "s_per_iter": None, "peak_mem_mb": None, "mem_kind": MEM_KIND[args.device],
        "classes": args.classes, "depth": args.depth, "dsa": args.dsa, "iters": args.iters, "warmup": args.warmup,
        "isolated": bool(args.isolate),
    }


def measure(args, engine: str, syn_steps: int) -> dict:
    """Run warm-up + timed outer iterations of one configuration in this process; return its row."""
    torch = common.setup_torch(args.device, args.threads)
    from dd.data import DSA
    from dd.image.methods.mtt import MTTConfig, Segment, Synthetic, outer_iteration, plan_steps
    from dd.image.train import fresh_model
    from dd.inner.engines import InnerConfig
    from dd.models import FlatModel

    row = _base_row(args, engine, syn_steps)
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    deadline = time.perf_counter() + args.timeout

    # ---- setup (seeded): random ConvNet, random images, expert start/target
    gen = torch.Generator().manual_seed(args.seed)
    c, h, w = args.shape
    module = fresh_model(common.convnet_config(args), common.shape_dataset(args.shape, args.classes), args.seed, device)
    row["depth"] = sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    student = FlatModel(module)
    n = args.ipc * args.classes
    m = MTTConfig()
    images = torch.randn(n, c, h, w, generator=gen).to(device)
    labels = torch.arange(args.classes).repeat_interleave(args.ipc).to(device)
    syn = Synthetic.create(images, labels, m.lr_teacher, m)
    theta_start = student.flatten().detach()
    theta_target = theta_start + TARGET_NOISE * torch.randn(theta_start.shape, generator=gen).to(device)
    segment = Segment(expert=0, start_epoch=0, start=theta_start, target=theta_target)
    inner = InnerConfig(engine=engine, memory_budget_mb=args.memory_budget_mb)
    dsa = DSA() if args.dsa else None
    row["params"] = student.numel

    def one_iteration() -> float:
        plan = plan_steps(n, args.batch_syn, syn_steps, gen)
        return float(outer_iteration(syn, student, segment, plan, dsa, inner, m.min_lr).loss)

    def sync():
        common.sync(args.device)

    def check_deadline():
        if time.perf_counter() > deadline:
            raise common.Timeout(f"timeout: over {args.timeout:g} s")

    # ---- baseline after setup, then warm-up, then timed iterations
    gc.collect()
    if args.child and not cuda:  # only now: imports and setup need their address space
        common.limit_address_space(args.mem_limit_mb)
    sync()
    if cuda:
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = common.rss_mb()
    for _ in range(args.warmup):
        one_iteration()
        check_deadline()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        row["peak_reset"] = common.reset_peak_rss()
    times, losses = [], []
    for _ in range(args.iters):
        sync()
        t0 = time.perf_counter()
        losses.append(one_iteration())
        sync()
        times.append(time.perf_counter() - t0)
        check_deadline()
    if cuda:
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 2)
        row["baseline_mem_mb"] = round(baseline, 2)
    else:
        row["peak_mem_mb"] = round(common.peak_rss_mb() - baseline, 2)
        row["baseline_rss_mb"] = round(baseline, 2)
    row["s_per_iter"] = round(sum(times) / len(times), 4)
    row["s_iters"] = [round(t, 4) for t in times]
    row["loss"] = losses[-1]
    row["threads"] = torch.get_num_threads()
    return row


def measure_safely(args, engine: str, syn_steps: int) -> dict:
    """measure(), with out-of-memory, timeout and other failures turned into an error row."""
    return common.measure_or_error(args.device, _base_row(args, engine, syn_steps), measure, args, engine, syn_steps)


def _child_argv(args, engine: str, syn_steps: int) -> list[str]:
    argv = [str(Path(__file__).resolve()), "--child",
            "--engine", engine, "--syn-steps", str(syn_steps), "--ipc", str(args.ipc),
            "--classes", str(args.classes), "--shape", ",".join(map(str, args.shape)),
            "--width", str(args.width), "--iters", str(args.iters), "--warmup", str(args.warmup),
            "--device", args.device, "--dsa" if args.dsa else "--no-dsa", "--seed", str(args.seed),
            "--threads", str(args.threads),
            *(["--memory-budget-mb", str(args.memory_budget_mb)] if args.memory_budget_mb is not None else []),
            "--timeout", str(args.timeout), "--mem-limit-mb", str(args.mem_limit_mb), "--isolate"]
    if args.depth is not None:
        argv += ["--depth", str(args.depth)]
    if args.batch_syn is not None:
        argv += ["--batch-syn", str(args.batch_syn)]
    return argv


def measure_isolated(args, engine: str, syn_steps: int) -> dict:
    """Run one configuration in a fresh interpreter and read back its JSON line."""
    row = _base_row(args, engine, syn_steps)
    try:
        child_row, proc = common.run_child(_child_argv(args, engine, syn_steps), timeout=args.timeout)
    except subprocess.TimeoutExpired:
        row.update(error=f"timeout: over {args.timeout:g} s (child killed)", error_kind="timeout")
        return row
    if child_row is not None:
        return child_row
    if proc.stderr:
        sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode == -signal.SIGKILL:
        row.update(error="child killed by SIGKILL (likely the kernel OOM killer)", error_kind="oom")
    else:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        row.update(error=f"child exited with {proc.returncode}: {tail[0][:300]}", error_kind="error")
    return row


# ----------------------------------------------------------------------------- report


def _fmt_mem(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if abs(mb) >= 10 * 1024 else f"{mb:.0f} MB"


def format_table(rows: list[dict], args) -> str:
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    steps = sorted({r["syn_steps"] for r in rows})
    by = {(r["engine"], r["syn_steps"]): r for r in rows}

    def ok(r):
        return common.ok(r, "s_per_iter")

    def cell(e, n):
        r = by.get((e, n))
        if r is None:
            return "-"
        if not ok(r):
            return common.error_cell(r)
        text = f"{r['s_per_iter']:.3g} s  {_fmt_mem(r['peak_mem_mb'])}"
        u = by.get(("unroll", n))
        if ok(u) and u["s_per_iter"] > 0 and e != "unroll":
            text += f"  ({r['s_per_iter'] / u['s_per_iter']:.2f}x time"
            text += f", {r['peak_mem_mb'] / u['peak_mem_mb']:.2f}x mem)" if u["peak_mem_mb"] > 0 else ")"
        return text

    def mem_ratio(e):
        done = [by[(e, n)] for n in steps if ok(by.get((e, n)))]
        if len(done) < 2 or done[0]["peak_mem_mb"] <= 0:
            return "-"
        lo, hi = done[0], done[-1]
        return f"{hi['peak_mem_mb'] / lo['peak_mem_mb']:.2f} ({hi['syn_steps']}/{lo['syn_steps']})"

    header = ["engine", *[f"syn_steps={n}" for n in steps], "mem max/min"]
    body = [[e, *[cell(e, n) for n in steps], mem_ratio(e)] for e in engines]

    depth = next((r["depth"] for r in rows if r.get("depth")), args.depth) or "auto"
    first = rows[0]
    title = (f"meta-gradient benchmark: device={args.device} shape={common.shape_text(args.shape)} "
             f"width={args.width} depth={depth} ipc={args.ipc} classes={args.classes} "
             f"batch_syn={first['batch_syn']} dsa={'on' if args.dsa else 'off'} "
             f"iters={args.iters} (+{args.warmup} warm-up)")
    mem_note = ("peak memory = torch.cuda.max_memory_allocated over the timed iterations" if args.device == "cuda"
                else "peak memory = peak RSS during the timed iterations - RSS before the first iteration"
                + ("" if args.isolate else " (NOT isolated: unreliable)"))
    budget = "none" if args.memory_budget_mb is None else f"{args.memory_budget_mb:g} MB"
    notes = ["cell: s/iter  peak memory  (time and peak memory relative to unroll at the same syn_steps)",
             f"auto's memory budget: {budget}", mem_note,
             "mem max/min: an engine's peak memory at its largest / smallest completed syn_steps"]
    return common.render_table(title, header, body, notes, left=1)


def save_plot(rows: list[dict], args, path: Path) -> None:
    """Peak memory and seconds per outer iteration against syn_steps, one line per engine."""
    plt = common.pyplot()
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = sorted({r["syn_steps"] for r in rows})
    for engine in dict.fromkeys(r["engine"] for r in rows):
        done = sorted((r for r in rows if r["engine"] == engine and "error" not in r), key=lambda r: r["syn_steps"])
        if not done:
            continue
        xs = [r["syn_steps"] for r in done]
        ax_mem.plot(xs, [r["peak_mem_mb"] for r in done], marker="o", label=engine)
        ax_time.plot(xs, [r["s_per_iter"] for r in done], marker="o", label=engine)
    ax_mem.set_ylabel(f"peak memory (MB, {MEM_KIND[args.device]})")
    ax_time.set_ylabel("seconds per outer iteration")
    common.style_x_axes((ax_mem, ax_time), steps, "syn_steps", log_base=2, minor=True)
    for ax in (ax_mem, ax_time):
        if ax.get_lines():
            ax.legend()
    failed = [f"{r['engine']}@{r['syn_steps']}:{r.get('error_kind', 'error')}" for r in rows if "error" in r]
    common.save_figure(fig, path, f"meta-gradient engines, {args.device}, shape {common.shape_text(args.shape)}, "
                       f"width {args.width}, ipc {args.ipc}, classes {args.classes}, batch_syn {rows[0]['batch_syn']}",
                       failed)


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    if args.child:  # one configuration, one JSON line, nothing written
        row = measure_safely(args, args.engine[0], args.syn_steps[0])
        print(json.dumps(row), flush=True)
        return 0

    load_start, t_start = common.begin(args)
    if args.device == "cpu" and not args.isolate:
        print("warning: --no-isolate on cpu: peak RSS of later configurations can be hidden by memory the "
              "allocator kept from earlier ones", file=sys.stderr)
    rows = []
    for engine in args.engine:
        failed_at = None
        for n in args.syn_steps:
            if failed_at is not None:  # memory and time only grow with syn_steps
                row = _base_row(args, engine, n)
                row.update(error=f"skipped: {failed_at['error_kind']} at syn_steps={failed_at['syn_steps']}",
                           error_kind="skipped")
            else:
                print(f"[meta_grad] {engine} syn_steps={n} ...", file=sys.stderr, flush=True)
                row = measure_isolated(args, engine, n) if args.isolate else measure_safely(args, engine, n)
                if row.get("error_kind") in ("oom", "timeout"):
                    failed_at = row
            print(json.dumps(row), flush=True)
            rows.append(row)
    wall = time.perf_counter() - t_start

    meta = common.run_meta(args, wall, load_start, engines=args.engine, syn_steps=args.syn_steps,
                           isolated=bool(args.isolate), timeout_s=args.timeout, mem_limit_mb=args.mem_limit_mb)
    return common.finish(args, rows, format_table(rows, args), f"wall time: {wall:.1f} s", meta, save_plot)


if __name__ == "__main__":
    sys.exit(main())
