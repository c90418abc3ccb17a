"""Seconds to evaluate a distilled set with K models: batched (vmap), parallel and sequential training.

The evaluation protocol (`dd.image.evaluate.evaluate_set`) trains K fresh ConvNets on a small set and
tests each on the test split. Three ways to train them:
- batched (`eval.batched=true`): together in one vmapped computation (`dd.image.batched.train_stack`,
  in chunks of `eval.model_batch`, on CUDA by default as many as free memory allows);
- parallel (`eval.batched=false`, `eval.workers` null; what `eval.batched: null` picks on CPU unless a step is
  tiny): as many at once as torch has
  threads, one per Python thread with single-threaded ops (`dd.workers`);
- sequential (`eval.batched=false eval.workers=1`): one after another, each op on torch's threads.
All follow the same per-model trajectories (same inits, data orders and DSA draws), so their
accuracies should agree up to float rounding; this script times each and checks that.

The set is CIFAR-shaped by default: IPC 10 x 10 classes = 100 images of 3x32x32, evaluated with
ConvNets (width 128, instance norm, ReLU, avg pool, depth from the image size), SGD lr 0.01,
momentum 0.9, DSA, minibatches of 256, for `--epochs` epochs, and tested on `--test-size` images.
The data are random but learnable (each class a smooth random pattern plus N(0,1) pixel noise,
`benchmarks/common.py`), seeded, and need no download. Seconds are the wall time around
`evaluate_set` (everything: model init, training, testing; on CUDA the model-batch probe too),
bracketed by `torch.cuda.synchronize()` on GPU, after one untimed warm-up evaluation of a tiny
configuration (2 models, 1 epoch, the same set and test split) per mode.

For each (K, mode) the script prints one JSON line
    {"k", "mode", "seconds", "models_per_s", "acc_mean", "acc_std", "per_model", ...}
then a table (K x mode: seconds, models/s, speed-up over sequential, mean accuracy and the
agreement of each mode's per-model accuracies with sequential's). Rows go to --json (default
benchmarks/results/evaluate_<device>.json, or evaluate_<device>_quick.json with --quick) and a PNG
of seconds and speed-up against K to --plot (default: the json path with .png). The load average
(os.getloadavg) is in the table header and in the JSON (meta and every row): CPU timings on a
shared machine are noisy.

Usage (from the repository root):
    python benchmarks/evaluate.py --quick                       # CPU, 1x16x16, width 32, K 5,20
    python benchmarks/evaluate.py --k 5,20 --epochs 2 --threads 2   # CPU, CIFAR shape (slow)
    python benchmarks/evaluate.py --device cuda                 # GPU: K 5,20,100, 20 epochs
    python benchmarks/evaluate.py --device cuda --k 100 --epochs 300 --model-batch 50
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

if __package__:
    from . import common
else:  # run as a script: benchmarks/ is sys.path[0]
    import common

MODES = ("batched", "parallel", "sequential")
DATA = ("random", "digits")
QUICK = {"shape": (1, 16, 16), "width": 32, "k": [5, 20], "epochs": 5, "test_size": 1000}
DEFAULTS = {"shape": (3, 32, 32), "width": 128, "k": [5, 20, 100], "test_size": 1000}
EPOCHS = {"cuda": 20, "cpu": 2}  # default --epochs without --quick
WARMUP = {"k": 2, "epochs": 1}  # same set and test split: no new tensor shapes later


# ----------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time set evaluation with K models: batched, parallel, sequential (see module docstring).")
    p.add_argument("--k", type=common.int_list, default=None,
                   help="models per evaluation, one or a comma list (default 5,20,100; --quick: 5,20)")
    p.add_argument("--modes", type=common.choice_list(MODES), default=list(MODES),
                   help="comma list of batched (vmap), parallel (eval.workers: one model per thread) and "
                        "sequential (one model at a time) (default: all three)")
    p.add_argument("--data", choices=DATA, default="random",
                   help="random: seeded learnable random images of --shape (default); digits: the bundled "
                        "digits (1x16x16), the set its first --ipc train images per class, tested on its test split")
    p.add_argument("--shape", type=common.shape, default=None, help="C,H,W (default 3,32,32; --quick: 1,16,16)")
    p.add_argument("--width", type=int, default=None, help="ConvNet width (default 128; --quick: 32)")
    p.add_argument("--depth", type=int, default=None, help="ConvNet depth (default: auto from the image size)")
    p.add_argument("--ipc", type=int, default=10, help="images per class of the evaluated set (default 10)")
    p.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs per model (default 20 on cuda, 2 on cpu; --quick: 5)")
    p.add_argument("--test-size", type=int, default=None, help="random test images (default 1000; --data digits: "
                                                                  "its whole test split)")
    p.add_argument("--lr", type=float, default=0.01, help="evaluation lr (default 0.01, as EvalConfig)")
    p.add_argument("--model-batch", type=int, default=None,
                   help="batched mode: models per vmapped chunk (default: all on cpu, what fits on cuda)")
    p.add_argument("--dsa", action=argparse.BooleanOptionalAction, default=True, help="DSA augmentation (default on)")
    p.add_argument("--acc-tol", type=float, default=0.01,
                   help="largest |mean accuracy difference| between the modes still called agreement (default 0.01)")
    common.add_device_args(p, seed_help="data and model seeds (default 0)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="one untimed tiny evaluation per mode first (default on)")
    common.add_output_args(p, "evaluate")
    p.add_argument("--quick", action="store_true",
                   help="small CPU run: shape 1,16,16, width 32, K 5,20, 5 epochs")
    p.add_argument("--profile", action="store_true",
                   help="also print the profiler's table of one model evaluated sequentially: how much of a "
                        "step is kernels and how much per-call overhead a batched program could save")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from --quick or the defaults; explicit options always win."""
    common.fill_defaults(args, QUICK if args.quick else {**DEFAULTS, "epochs": EPOCHS[args.device]})
    args.k = sorted(args.k)
    common.require_positive(args, ("ipc", "classes", "width", "epochs", "test_size"), ("depth", "model_batch"))
    if not args.lr > 0:
        raise SystemExit(f"--lr={args.lr}: must be > 0")
    common.output_paths(args, "evaluate")
    return args


# ----------------------------------------------------------------------------- measuring


class _Capture(logging.Handler):
    """Keeps dd.image.batched's 'model batch: ...' lines (how many models CUDA fitted per chunk)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def configs(args, k: int, mode: str, epochs: int | None = None):
    """(model config, `dd.image.evaluate.EvalConfig`) of an evaluation of K models in one mode."""
    from omegaconf import OmegaConf

    from dd.image.evaluate import EvalConfig

    eval_cfg = OmegaConf.structured(EvalConfig(
        num_models=k, epochs=args.epochs if epochs is None else epochs, lr=args.lr, dsa=args.dsa,
        batched=mode == "batched", model_batch=args.model_batch, workers=1 if mode == "sequential" else None))
    return common.convnet_config(args), eval_cfg


def make_data(args):
    """(dataset, set images, set labels): the test split and the evaluated set, from one seed."""
    import torch

    if args.data == "digits":
        from dd.data.images import load_image_dataset

        data = load_image_dataset("digits")
        idx = torch.cat([data.indices_of_class(c)[: args.ipc] for c in range(data.num_classes)])
        return data, data.train_x[idx], data.train_y[idx]
    data, protos = common.random_image_dataset(n_train=0, n_test=args.test_size, shape=args.shape,
                                               classes=args.classes, seed=args.seed)
    labels = torch.arange(args.classes).repeat_interleave(args.ipc)
    images = common.sample_images(labels, protos, seed=args.seed + 10)
    return data, images, labels


def base_row(args, k: int, mode: str) -> dict:
    return {"k": k, "mode": mode, "data": args.data, "seconds": None, "models_per_s": None, "acc_mean": None, "acc_std": None,
            "device": args.device, "shape": list(args.shape), "width": args.width, "depth": args.depth,
            "ipc": args.ipc, "classes": args.classes, "epochs": args.epochs, "test_size": args.test_size,
            "lr": args.lr, "dsa": args.dsa, "model_batch": args.model_batch if mode == "batched" else None}


def evaluate(args, data, images, labels, k: int, mode: str, seed: int, epochs: int | None = None, desc: str = ""):
    """`dd.image.evaluate.evaluate_set` of the set with K models in one mode (what is timed)."""
    from dd.image.evaluate import evaluate_set

    model_cfg, eval_cfg = configs(args, k, mode, epochs)
    return evaluate_set(images, labels, data, model_cfg, eval_cfg, lr=args.lr, seed=seed, device=args.device,
                        progress=False, desc=desc)


def measure(args, data, images, labels, k: int, mode: str) -> dict:
    """One timed evaluate_set of K models in one mode; return its row."""
    import torch

    from dd.workers import worker_count

    row = base_row(args, k, mode)
    capture = _Capture()
    logger = logging.getLogger("dd.image.batched")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(capture)
    try:
        row["loadavg"] = common.loadavg()
        result, seconds = common.timed(args.device, lambda: evaluate(args, data, images, labels, k, mode, args.seed,
                                                                      desc=f"{mode} K={k}"))
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    row.update(seconds=round(seconds, 4), models_per_s=round(k / seconds, 4),
               acc_mean=round(result.mean, 6), acc_std=round(result.std, 6),
               per_model=[round(a, 6) for a in result.per_model], eval_seconds=round(result.seconds, 4),
               peak_mem_mb=common.peak_mem_mb(args.device), threads=torch.get_num_threads(),
               workers=worker_count(1 if mode == "sequential" else None, k, args.device) if mode != "batched" else None,
               depth=common.convnet_depth(args))
    if capture.messages:
        row["model_batch_log"] = capture.messages
    return row


def warm_up(args, data, images, labels) -> float:
    """One untimed evaluation per mode of a tiny configuration (kernels, vmap, allocator)."""
    t0 = time.perf_counter()
    for mode in args.modes:
        evaluate(args, data, images, labels, WARMUP["k"], mode, args.seed + 1, epochs=WARMUP["epochs"], desc="warm-up")
    common.sync(args.device)
    return time.perf_counter() - t0


def compare_modes(rows: list[dict], tol: float) -> None:
    """Add speed-up and accuracy agreement to each batched or parallel row that has a sequential partner."""
    by = {(r["k"], r["mode"]): r for r in rows}
    for r in rows:
        s = by.get((r["k"], "sequential"))
        if r["mode"] == "sequential" or not (common.ok(r) and common.ok(s)):
            continue
        r["speedup"] = round(s["seconds"] / r["seconds"], 3)
        diffs = [abs(a - b) for a, b in zip(r["per_model"], s["per_model"])]
        r["acc_mean_diff"] = round(r["acc_mean"] - s["acc_mean"], 6)
        r["acc_max_model_diff"] = round(max(diffs), 6)
        r["acc_models_differing"] = sum(d > 0 for d in diffs)
        r["acc_agree"] = abs(r["acc_mean_diff"]) <= tol


# ----------------------------------------------------------------------------- report


def format_table(rows: list[dict], args, load_start) -> str:
    body = []
    for r in rows:
        if not common.ok(r):
            body.append([str(r["k"]), r["mode"], common.error_cell(r), "-", "-", "-", "-"])
            continue
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        if "acc_agree" in r:
            check = (f"{'ok' if r['acc_agree'] else 'MISMATCH'} (mean {100 * r['acc_mean_diff']:+.2f} pp, "
                     f"max model {100 * r['acc_max_model_diff']:.1f} pp, {r['acc_models_differing']}/{r['k']} differ)")
        else:
            check = "-"
        body.append([str(r["k"]), r["mode"], f"{r['seconds']:.2f}", f"{r['models_per_s']:.3g}", speed,
                     f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f}", check])
    header = ["K", "mode", "seconds", "models/s", "speed-up", "acc % (mean ± std)", "acc vs sequential"]
    depth = next((r["depth"] for r in rows if r.get("depth")), args.depth) or "auto"
    title = (f"evaluate benchmark: device={args.device} data={args.data} shape={common.shape_text(args.shape)} width={args.width} "
             f"depth={depth} set={args.ipc * args.classes} images (ipc {args.ipc} x {args.classes} classes) "
             f"epochs={args.epochs} test={args.test_size} dsa={'on' if args.dsa else 'off'} "
             f"model_batch={args.model_batch or 'auto'} threads={rows[0].get('threads', '?') if rows else '?'} "
             f"load avg (1/5/15 min)={common.fmt_load(load_start)}")
    notes = ["seconds: wall time of evaluate_set (init + train + test)" + common.timing_note(args.device),
             "speed-up: sequential seconds / this mode's seconds at the same K",
             f"acc check: |mean - mean sequential| <= {100 * args.acc_tol:g} pp; per-model accuracies may differ "
             "slightly (float rounding in vmap, or in ops run on 1 thread instead of several, flips a few test "
             "predictions)"]
    return common.render_table(title, header, body, notes)


def save_plot(rows: list[dict], args, path: Path) -> None:
    """Seconds per evaluation against K per mode, and the speed-up against K."""
    common.save_mode_plot(rows, args, path, "k", "K (models)", "seconds", "seconds per evaluation",
                          f"evaluate_set, {args.device}, shape {common.shape_text(args.shape)}, width {args.width}, "
                          f"{args.ipc * args.classes} images, {args.epochs} epochs, test {args.test_size}")


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    load_start, t_start = common.begin(args)
    from dd import seeds

    seeds.seed_global("global", args.seed)
    data, images, labels = make_data(args)
    if args.data == "digits":  # rows and table describe the set that was run
        args.shape, args.classes, args.test_size = tuple(images.shape[1:]), data.num_classes, len(data.test_y)
    warm = common.warm_up("evaluate", lambda: warm_up(args, data, images, labels)) if args.warmup else None
    rows = []
    for k in args.k:
        for mode in args.modes:
            print(f"[evaluate] K={k} {mode} ...", file=sys.stderr, flush=True)
            row = common.measure_or_error(args.device, base_row(args, k, mode), measure, args, data, images, labels, k,
                                          mode)
            print(json.dumps({key: v for key, v in row.items() if key != "per_model"}), flush=True)
            rows.append(row)
    compare_modes(rows, args.acc_tol)
    wall = time.perf_counter() - t_start

    meta = common.run_meta(args, wall, load_start, k=args.k, modes=args.modes, warmup_s=None if warm is None
                           else round(warm, 2), acc_tol=args.acc_tol)
    table = format_table(rows, args, load_start)
    if args.profile:
        one = lambda: evaluate(args, data, images, labels, 1, "sequential", args.seed)  # noqa: E731
        table += "\n\nprofile of one model evaluated sequentially (self CPU time):\n" + common.profile_table(one, 18)
    status = common.finish(args, rows, table, common.wall_line(wall, warm), meta, save_plot)
    mismatched = [r for r in rows if r.get("acc_agree") is False]
    if mismatched:
        print(f"WARNING: accuracies disagree with sequential's at {[(r['k'], r['mode']) for r in mismatched]} "
              f"(beyond {100 * args.acc_tol:g} pp)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
