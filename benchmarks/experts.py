"""Images/s of expert training (dd-buffer): E experts batched (vmap) vs one after another.

An expert is a fresh ConvNet trained on the whole training set with plain SGD (lr 0.01, no
momentum, no weight decay), DSA on every minibatch of 256, its parameters recorded after every
epoch (`dd.image.experts`). `buffer.parallel=E` trains E experts at once with
`train_experts_batched` (one vmapped computation, `dd.image.batched.train_stack`); otherwise each is
trained by `train_expert`. Both follow the same per-seed trajectories, so this script also checks
that the two modes end at the same parameters (up to float rounding) and test accuracies.

For each E (default 1, 4, 16) and mode:
- batched: one `train_experts_batched(data, model, recipe, seeds)` call for the E seeds
  (E=1: `train_expert`, which is what dd-buffer runs for a single expert, so batched and
  sequential are the same code there and their difference shows the timing noise);
- sequential: E `train_expert` calls one after another.
images/s = E * train_size * epochs / seconds, where seconds is the wall time of those calls
(model init, training, the per-epoch trajectory copies to CPU and each expert's final test pass on
`--test-size` images), bracketed by `torch.cuda.synchronize()` on GPU, after one untimed warm-up of
a tiny configuration (2 experts, 1 epoch on one full and, if any, one short minibatch, the
whole test set) per mode, so the timed runs meet no new tensor shape.

The training set is CIFAR-shaped by default (3x32x32, 10 classes) and random but learnable (each
class a smooth random pattern plus N(0,1) pixel noise, `benchmarks/common.py`), seeded; no download.
Seeds are dd-buffer's: `dd.image.experts.expert_seeds(seed, expert id)`.

For each (E, mode) the script prints one JSON line
    {"e", "mode", "seconds", "images_per_s", "acc_mean", ...}
then a table (E x mode: seconds, images/s, batched/sequential speed-up, and the largest
difference between the two modes' final parameters and accuracies). Rows go to --json (default
benchmarks/results/experts_<device>.json, or experts_<device>_quick.json with --quick) and a PNG of
images/s and speed-up against E to --plot (default: the json path with .png). The load average
(os.getloadavg) is in the table header and in the JSON (meta and every row): CPU timings on a
shared machine are noisy.

Usage (from the repository root):
    python benchmarks/experts.py --quick                        # CPU, 1x16x16, width 32, 1500 images
    python benchmarks/experts.py --e 1,4 --train-size 1000 --threads 2   # CPU, CIFAR shape (slow)
    python benchmarks/experts.py --device cuda                  # GPU: 5000 images, E 1,4,16
    python benchmarks/experts.py --device cuda --train-size 50000 --e 1,8,32 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__:
    from . import common
else:  # run as a script: benchmarks/ is sys.path[0]
    import common

MODES = ("batched", "sequential")
QUICK = {"shape": (1, 16, 16), "width": 32, "e": [1, 4, 16], "train_size": 1500}
DEFAULTS = {"shape": (3, 32, 32), "width": 128, "e": [1, 4, 16]}
TRAIN_SIZE = {"cuda": 5000, "cpu": 1000}  # default --train-size without --quick
WARMUP = {"e": 2, "epochs": 1}


# ----------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time expert training, E experts batched vs sequential (see module docstring).")
    p.add_argument("--e", type=common.int_list, default=None,
                   help="experts per measurement, one or a comma list (default 1,4,16)")
    p.add_argument("--modes", type=common.choice_list(MODES), default=list(MODES),
                   help="batched, sequential or both (default batched,sequential)")
    p.add_argument("--shape", type=common.shape, default=None, help="C,H,W (default 3,32,32; --quick: 1,16,16)")
    p.add_argument("--width", type=int, default=None, help="ConvNet width (default 128; --quick: 32)")
    p.add_argument("--depth", type=int, default=None, help="ConvNet depth (default: auto from the image size)")
    p.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    p.add_argument("--train-size", type=int, default=None,
                   help="random training images (default 5000 on cuda, 1000 on cpu; --quick: 1500)")
    p.add_argument("--test-size", type=int, default=500, help="random test images for each expert's final test (default 500)")
    p.add_argument("--epochs", type=int, default=1, help="expert epochs (default 1)")
    p.add_argument("--batch-size", type=int, default=256, help="minibatch (default 256, as buffer.batch_size)")
    p.add_argument("--lr", type=float, default=0.01, help="expert lr (default 0.01, as buffer.lr)")
    p.add_argument("--dsa", action=argparse.BooleanOptionalAction, default=True, help="DSA augmentation (default on)")
    p.add_argument("--param-tol", type=float, default=1e-3,
                   help="largest relative final-parameter difference between the modes still called agreement: "
                        "||theta_b - theta_s|| / ||theta_s - theta_0|| (default 1e-3)")
    common.add_device_args(p, seed_help="data and expert seeds (default 0)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="one untimed tiny run per mode first (default on)")
    common.add_output_args(p, "experts")
    p.add_argument("--quick", action="store_true",
                   help="small CPU run: shape 1,16,16, width 32, 1500 training images, E 1,4,16")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from --quick or the defaults; explicit options always win."""
    common.fill_defaults(args, QUICK if args.quick else {**DEFAULTS, "train_size": TRAIN_SIZE[args.device]})
    args.e = sorted(args.e)
    common.require_positive(args, ("classes", "width", "train_size", "test_size", "epochs", "batch_size"), ("depth",))
    if not args.lr > 0:
        raise SystemExit(f"--lr={args.lr}: must be > 0")
    common.output_paths(args, "experts")
    return args


# ----------------------------------------------------------------------------- measuring


def recipe(args, epochs: int | None = None) -> dict:
    """What dd.image.experts.buffer_identity passes as the recipe."""
    return {"lr": float(args.lr), "batch_size": int(args.batch_size), "dsa": bool(args.dsa),
            "epochs": int(args.epochs if epochs is None else epochs)}


def seeds_for(args, e: int):
    from dd.image.experts import expert_seeds

    return [expert_seeds(args.seed, i) for i in range(e)]


def train(args, data, e: int, mode: str, epochs: int | None = None) -> list:
    """[(trajectory, test accuracy)] of E experts, trained the way `mode` says."""
    from dd.image.experts import train_expert, train_experts_batched

    model_cfg, rec, seeds = common.convnet_config(args), recipe(args, epochs), seeds_for(args, e)
    if mode == "batched" and e > 1:
        return train_experts_batched(data, model_cfg, rec, seeds, args.device, progress=False)
    return [train_expert(data, model_cfg, rec, s, args.device, progress=False, desc=f"expert {i}")
            for i, s in enumerate(seeds)]


def base_row(args, e: int, mode: str) -> dict:
    return {"e": e, "mode": mode, "seconds": None, "images_per_s": None, "acc_mean": None,
            "function": "train_experts_batched" if mode == "batched" and e > 1 else "train_expert",
            "device": args.device, "shape": list(args.shape), "width": args.width, "depth": args.depth,
            "classes": args.classes, "train_size": args.train_size, "test_size": args.test_size,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "dsa": args.dsa}


def measure(args, data, e: int, mode: str) -> tuple[dict, list]:
    """One timed training of E experts in one mode; return its row and the experts."""
    import torch

    row = base_row(args, e, mode)
    row["loadavg"] = common.loadavg()
    experts, seconds = common.timed(args.device, lambda: train(args, data, e, mode))
    accs = [acc for _, acc in experts]
    row.update(seconds=round(seconds, 4), images_per_s=round(e * args.train_size * args.epochs / seconds, 2),
               acc_mean=round(sum(accs) / len(accs), 6), per_expert_acc=[round(a, 6) for a in accs],
               peak_mem_mb=common.peak_mem_mb(args.device), threads=torch.get_num_threads(),
               num_params=int(experts[0][0].shape[1]), depth=common.convnet_depth(args))
    return row, experts


def measure_safely(args, data, e: int, mode: str) -> tuple[dict, list | None]:
    """measure(), or an error row and no experts."""
    result = common.measure_or_error(args.device, base_row(args, e, mode), measure, args, data, e, mode)
    return result if isinstance(result, tuple) else (result, None)


def compare(row: dict, experts_b: list, experts_s: list, row_s: dict, tol: float) -> None:
    """Speed-up and agreement of the batched row with its sequential partner (same seeds)."""
    import torch

    row["speedup"] = round(row_s["seconds"] / row["seconds"], 3)
    rel = []
    for (tb, _), (ts, _) in zip(experts_b, experts_s):
        moved = torch.linalg.vector_norm(ts[-1] - ts[0]).item()
        rel.append(torch.linalg.vector_norm(tb[-1] - ts[-1]).item() / max(moved, 1e-30))
    row["param_rel_diff_max"] = float(f"{max(rel):.3g}")
    row["init_equal"] = all(torch.equal(tb[0], ts[0]) for (tb, _), (ts, _) in zip(experts_b, experts_s))
    row["acc_max_diff"] = round(max(abs(a - b) for a, b in zip(row["per_expert_acc"], row_s["per_expert_acc"])), 6)
    row["agree"] = row["init_equal"] and row["param_rel_diff_max"] <= tol


def warm_up(args, data) -> float:
    """One untimed run per mode of a tiny configuration (kernels, vmap, allocator)."""
    # full batches and, where there is one, the short last batch: the shapes the timed runs see
    # (CPU kernels are prepared per input shape on first use)
    n = min(args.train_size, args.batch_size + args.train_size % args.batch_size)
    small = common.subset(data, n_train=n)
    t0 = time.perf_counter()
    for mode in args.modes:
        train(args, small, WARMUP["e"], mode, epochs=WARMUP["epochs"])
    common.sync(args.device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- report


def format_table(rows: list[dict], args, load_start) -> str:
    body = []
    for r in rows:
        name = r["mode"] + (" (=train_expert)" if r["mode"] == "batched" and r["e"] == 1 else "")
        if not common.ok(r):
            body.append([str(r["e"]), name, common.error_cell(r), "-", "-", "-", "-"])
            continue
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        check = "-"
        if "agree" in r:
            check = (f"{'ok' if r['agree'] else 'MISMATCH'} (params {r['param_rel_diff_max']:.1e}, "
                     f"acc {100 * r['acc_max_diff']:.1f} pp)")
        body.append([str(r["e"]), name, f"{r['seconds']:.2f}", f"{r['images_per_s']:.4g}", speed,
                     f"{100 * r['acc_mean']:.2f}", check])
    header = ["E", "mode", "seconds", "images/s", "speed-up", "acc %", "batched vs sequential"]
    depth = next((r["depth"] for r in rows if r.get("depth")), args.depth) or "auto"
    threads = next((r["threads"] for r in rows if r.get("threads")), "?")
    title = (f"experts benchmark: device={args.device} shape={common.shape_text(args.shape)} width={args.width} "
             f"depth={depth} train={args.train_size} test={args.test_size} epochs={args.epochs} "
             f"batch={args.batch_size} dsa={'on' if args.dsa else 'off'} threads={threads} "
             f"load avg (1/5/15 min)={common.fmt_load(load_start)}")
    notes = ["images/s = E * train_size * epochs / seconds; seconds: wall time of the E experts (init, training, "
             "trajectory copies, final test)" + common.timing_note(args.device),
             "speed-up: sequential seconds / batched seconds at the same E (E=1: the same code twice, i.e. noise)",
             f"check: max over experts of ||theta_b - theta_s|| / ||theta_s - theta_0|| at the last epoch "
             f"(ok if <= {args.param_tol:g} and the inits are equal), and max test-accuracy difference"]
    return common.render_table(title, header, body, notes)


def save_plot(rows: list[dict], args, path: Path) -> None:
    """Training images/s against E per mode, and the speed-up against E."""
    common.save_mode_plot(rows, args, path, "e", "E (experts)", "images_per_s", "training images / s (all experts)",
                          f"expert training, {args.device}, shape {common.shape_text(args.shape)}, width {args.width}, "
                          f"{args.train_size} images x {args.epochs} epoch(s), batch {args.batch_size}")


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    load_start, t_start = common.begin(args)
    data, _ = common.random_image_dataset(args.train_size, args.test_size, args.shape, args.classes, args.seed)
    warm = common.warm_up("experts", lambda: warm_up(args, data)) if args.warmup else None
    rows = []
    for e in args.e:
        done = {}
        for mode in args.modes:
            print(f"[experts] E={e} {mode} ...", file=sys.stderr, flush=True)
            row, experts = measure_safely(args, data, e, mode)
            done[mode] = (row, experts)
            rows.append(row)
        if common.ok(done.get("batched", (None,))[0]) and common.ok(done.get("sequential", (None,))[0]):
            compare(done["batched"][0], done["batched"][1], done["sequential"][1], done["sequential"][0],
                    args.param_tol)
        for row, _ in done.values():
            print(json.dumps({k: v for k, v in row.items() if k != "per_expert_acc"}), flush=True)
        del done
    wall = time.perf_counter() - t_start

    meta = common.run_meta(args, wall, load_start, e=args.e, modes=args.modes,
                           warmup_s=None if warm is None else round(warm, 2), param_tol=args.param_tol)
    status = common.finish(args, rows, format_table(rows, args, load_start), common.wall_line(wall, warm), meta,
                           save_plot)
    mismatched = [r for r in rows if r.get("agree") is False]
    if mismatched:
        print(f"WARNING: batched and sequential experts disagree at E={[r['e'] for r in mismatched]}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
