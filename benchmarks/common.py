"""Helpers shared by the benchmark scripts (`evaluate.py`, `experts.py`, `meta_grad.py`, `text_meta_grad.py`).

Argument types and the options every script has, seeded random CIFAR-shape data (an `ImageDataset`
built from tensors, no download), the benchmark ConvNet's config, device set-up, synchronisation
and timing, CPU memory readings (RSS), child processes, error rows, the run's metadata (versions,
load average), plain-text tables, plots and the common end of a run (table, JSON, PNG, exit
status). Importing this module has no side effects; torch and dd are imported inside the
functions that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


# ----------------------------------------------------------------------------- arguments


def int_list(text: str) -> list[int]:
    """'5,20,100' -> [5, 20, 100] (positive integers, duplicates dropped, order kept)."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more positive integers")
    return list(dict.fromkeys(values))


def shape(text: str) -> tuple[int, int, int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected C,H,W (positive integers)")
    return tuple(values)


def choice_list(choices: tuple[str, ...]):
    """An argparse type: a comma list of names from `choices`, duplicates dropped."""

    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad or text!r}; choose from: {', '.join(choices)}")
        return list(dict.fromkeys(names))

    return parse


def fill_defaults(args: argparse.Namespace, table: dict) -> None:
    """Set every option still None from `table` (explicit options always win)."""
    for key, value in table.items():
        if getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, list) else value)


def add_device_args(p: argparse.ArgumentParser, seed_help: str = "default 0") -> None:
    """--device, --seed and --threads, as every image benchmark takes them."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default)")


def add_output_args(p: argparse.ArgumentParser, name: str) -> None:
    """--json and --plot, defaulting (in `output_paths`) to benchmarks/results/<name>_<device>[_quick]."""
    p.add_argument("--json", type=Path, default=None,
                   help=f"results file (default benchmarks/results/{name}_<device>[_quick].json)")
    p.add_argument("--plot", type=Path, default=None, help="PNG (default: the json path with .png)")


def output_paths(args: argparse.Namespace, name: str) -> None:
    """Fill --json and --plot when they were not given."""
    if args.json is None:
        args.json = RESULTS / f"{name}_{args.device}{'_quick' if args.quick else ''}.json"
    if args.plot is None:
        args.plot = args.json.with_suffix(".png")


def require_positive(args: argparse.Namespace, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Exit with a message unless every option in `required` (and each of `optional` that is set) is >= 1."""
    for key in required:
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')}={getattr(args, key)}: must be >= 1")
    for key in optional:
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')}={getattr(args, key)}: must be >= 1")


def ensure_root_on_path() -> None:
    """Let `python benchmarks/<script>.py` import dd without the package being installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- device


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def fmt_load(load: list[float] | None) -> str:
    return "n/a" if load is None else "/".join(f"{v:.2f}" for v in load)


def setup_torch(device: str, threads: int):
    """Check the device (`dd.device.resolve_device`), set the CPU thread count (0: torch's default);
    return the torch module."""
    import torch

    ensure_root_on_path()
    from dd.device import resolve_device
    from dd.errors import DDError

    try:
        resolve_device(device)
    except DDError:
        raise SystemExit(f"--device {device}: torch sees no CUDA device on this machine") from None
    if threads > 0:
        torch.set_num_threads(threads)
    from omegaconf import OmegaConf

    from dd.hostmem import keep_freed_memory
    from dd.inner.engines import InnerConfig
    from dd.precision import start_run

    # what a dd-distill run starts with: cuDNN autotuning on, TF32 off outside evaluation and experts
    start_run(OmegaConf.create({"cudnn_benchmark": True, "inner": OmegaConf.structured(InnerConfig())}))

    keep_freed_memory()  # as every dd-* command does (off with DD_KEEP_FREED_MEMORY=0)
    return torch


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_mem_mb(device: str) -> float | None:
    """torch.cuda.max_memory_allocated since reset_peak (None on CPU: not measured there)."""
    if device != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def release(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def begin(args: argparse.Namespace):
    """Start a run: dd importable, the device checked, --threads set; return (load average, start time)."""
    ensure_root_on_path()
    setup_torch(args.device, args.threads)
    return loadavg(), time.perf_counter()


def warm_up(name: str, run) -> float:
    """Announce and time the untimed warm-up `run()` (seconds)."""
    print(f"[{name}] warm-up ...", file=sys.stderr, flush=True)
    return run()


def timing_note(device: str) -> str:
    """How to read the wall times on this device (a table note's suffix)."""
    return "; CUDA-synchronised" if device == "cuda" else "; CPU timings are noisy on a loaded machine"


def profile_table(fn, rows: int) -> str:
    """The torch profiler's table of one call of fn (operators by self CPU time, `rows` of them)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def timed(device: str, fn):
    """(fn(), seconds): wall time of one call from a clean, synchronised device (the peak memory
    counter reset, so `peak_mem_mb` afterwards is this call's)."""
    release(device)
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - t0


# ----------------------------------------------------------------------------- CPU memory (RSS)


def meminfo_mb(key: str) -> float | None:
    """A /proc/meminfo field in MB (None where there is no procfs)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # no procfs: the peak so far is the best we have
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """The process's RSS high-water mark (getrusage ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0), so ru_maxrss restarts from now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_size_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def limit_address_space(extra_mb: int) -> None:
    """Let this process map at most `extra_mb` more: allocations past it raise instead of OOM-killing."""
    size = _vm_size_bytes()
    if extra_mb <= 0 or size is None:
        return
    limit = size + extra_mb * 2**20
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


# ----------------------------------------------------------------------------- child processes


def run_child(argv: list[str], timeout: float | None = None, **env):
    """Run `python <script> ...` in a fresh interpreter (the repository root on PYTHONPATH, `env`
    added); return (its last JSON line as a dict or None, the CompletedProcess). Raises
    subprocess.TimeoutExpired past `timeout`."""
    import subprocess

    full_env = dict(os.environ, **env)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line), proc
    return None, proc


# ----------------------------------------------------------------------------- data


def class_prototypes(classes: int, shape: tuple[int, int, int], seed: int):
    """One smooth random pattern per class (bilinear upsampling of a 4x4 N(0,1) grid)."""
    import torch
    import torch.nn.functional as F

    c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(classes, c, min(4, h), min(4, w), generator=gen)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def sample_images(labels, prototypes, seed: int, noise: float = 1.0):
    """Images of the given labels: the class pattern plus N(0, noise^2) pixel noise."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return prototypes[labels] + noise * torch.randn((len(labels), *prototypes.shape[1:]), generator=gen)


def balanced_labels(n: int, classes: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return (torch.arange(n) % classes)[torch.randperm(n, generator=gen)]


def random_image_dataset(n_train: int, n_test: int, shape: tuple[int, int, int], classes: int = 10,
                         seed: int = 0, noise: float = 1.0):
    """A seeded CIFAR-like `dd.data.ImageDataset` of random images (on CPU), learnable but not trivially.

    Every image is its class's smooth random pattern plus pixel noise, so a ConvNet gets above
    chance and the test accuracies of two training runs can be compared. Returns (data, prototypes).
    """
    from dd.data.images import ImageDataset

    protos = class_prototypes(classes, shape, seed)
    train_y = balanced_labels(n_train, classes, seed + 1)
    test_y = balanced_labels(n_test, classes, seed + 2)
    data = ImageDataset(
        name="random", train_x=sample_images(train_y, protos, seed + 3, noise), train_y=train_y,
        test_x=sample_images(test_y, protos, seed + 4, noise), test_y=test_y, num_classes=classes,
        class_names=[f"class_{i}" for i in range(classes)], mean=[0.0] * shape[0], std=[1.0] * shape[0],
        zca=None, flip=True,
    )
    return data, protos


def shape_dataset(shape: tuple[int, int, int], classes: int):
    """An empty `ImageDataset` that only says the shape and the number of classes (for building models)."""
    return random_image_dataset(0, 0, shape, classes)[0]


def convnet_config(args: argparse.Namespace):
    """The benchmark ConvNet as a `dd.models.factory.ModelConfig` (--width, --depth, instance norm; ReLU and
    average pooling are the ConvNet's defaults), for `dd.image.train.new_model` / `fresh_model`."""
    from omegaconf import OmegaConf

    from dd.models.factory import ModelConfig

    return OmegaConf.structured(ModelConfig(name="convnet", width=args.width, depth=args.depth, norm="instance"))


def convnet_depth(args: argparse.Namespace) -> int:
    """--depth, or the depth the ConvNet chooses for --shape (`dd.models.convnet.auto_depth`)."""
    from dd.models.convnet import auto_depth

    return args.depth if args.depth is not None else auto_depth(tuple(args.shape[1:]))


def subset(data, n_train: int | None = None, n_test: int | None = None):
    """The same dataset cut to its first n_train / n_test images (for warm-up runs)."""
    from dataclasses import replace

    return replace(data, train_x=data.train_x[:n_train], train_y=data.train_y[:n_train],
                   test_x=data.test_x[:n_test], test_y=data.test_y[:n_test])


# ----------------------------------------------------------------------------- failures


class Timeout(Exception):
    """A measurement ran past its time limit (recorded as error_kind "timeout")."""


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None:
        kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if k is not None)
        if kinds and isinstance(exc, kinds):
            return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory"))


def record_error(row: dict, exc: BaseException) -> dict:
    """Turn a failed measurement into an error row (timeout, oom, or error with its traceback printed)."""
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    if isinstance(exc, Timeout):
        row.update(error=str(exc), error_kind="timeout")
    elif is_oom(exc):
        row.update(error=f"out of memory: {type(exc).__name__}: {first}", error_kind="oom")
    else:
        traceback.print_exc()
        row.update(error=f"{type(exc).__name__}: {first}", error_kind="error")
    return row


def measure_or_error(device: str, base_row: dict, measure, *args):
    """measure(*args), or base_row turned into an error row when it raises; memory released either way."""
    try:
        return measure(*args)
    except Exception as exc:  # noqa: BLE001 - a benchmark row records any failure
        return record_error(base_row, exc)
    finally:
        release(device)


def error_cell(row: dict) -> str:
    """What a table cell says for a failed row."""
    return {"oom": "OOM", "timeout": "timeout", "skipped": "skipped"}.get(row.get("error_kind"), "error")


def ok(row: dict | None, key: str = "seconds") -> bool:
    """Whether a row is a completed measurement (no error, its number `key` present)."""
    return row is not None and "error" not in row and row.get(key) is not None


# ----------------------------------------------------------------------------- report


def run_meta(args: argparse.Namespace, wall_s: float, load_start, **extra) -> dict:
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    meta = {"argv": sys.argv[1:], "quick": args.quick, "device": args.device, "torch": torch_version,
            "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "threads": _threads(), "loadavg_start": load_start, "loadavg_end": loadavg(),
            "seed": args.seed, "wall_s": round(wall_s, 1), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "keep_freed_memory": _keeps_freed_memory(), **extra}
    if args.device == "cuda":
        import torch

        meta["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    meta["precision"] = _precision()
    return meta


def _precision() -> dict | None:
    """The kernel settings in force outside evaluation and expert phases (which set their own: dd.precision),
    and those phases' defaults."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    from dd.image.evaluate import EvalConfig
    from dd.image.experts import BufferConfig

    return {"cudnn_benchmark": torch.backends.cudnn.benchmark, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32, "eval_tf32": EvalConfig().tf32,
            "experts_tf32": BufferConfig().tf32, "autocast": None}


def _keeps_freed_memory() -> bool:
    """Whether this process runs with dd.hostmem's allocator setting (every dd-* command does)."""
    hostmem = sys.modules.get("dd.hostmem")
    return bool(hostmem and hostmem.is_on())


def _threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def render_table(title: str, header: list[str], body: list[list[str]], notes: list[str], left: int = 2) -> str:
    """A plain-text table: the first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line):
        return " | ".join(s.ljust(wd) if i < left else s.rjust(wd) for i, (s, wd) in enumerate(zip(line, widths)))

    rule = "-+-".join("-" * wd for wd in widths)
    return "\n".join([title, fmt(header), rule, *map(fmt, body), *notes])


def write_json(path: Path, meta: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def shape_text(shape) -> str:
    return "x".join(map(str, shape))


def style_x_axes(axes, xs: list[int], xlabel: str, log_base: int = 10, minor: bool = False) -> None:
    """The shared x axis of a sweep plot: the measured values as ticks, log scale over a range >= 4x."""
    for ax in axes:
        ax.set_xlabel(xlabel)
        if len(xs) > 1 and xs[-1] / xs[0] >= 4:
            ax.set_xscale("log", base=log_base)
        ax.set_xticks(xs, [str(x) for x in xs])
        if not minor:
            ax.minorticks_off()
        ax.grid(True, alpha=0.3)


def save_figure(fig, path: Path, title: str, failed: list[str]) -> None:
    """Title (with the failed configurations, if any), layout, PNG, close."""
    plt = pyplot()
    if failed:
        title += "\nfailed: " + ", ".join(failed)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_mode_plot(rows: list[dict], args: argparse.Namespace, path: Path, count: str, count_label: str,
                   metric: str, metric_label: str, title: str) -> None:
    """Two panels against the count `count` (K models, E experts): `metric` per mode, and the speed-up
    (sequential / batched) of the rows that have one."""
    plt = pyplot()
    fig, (ax_metric, ax_speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = sorted({r[count] for r in rows})
    for mode in args.modes:
        done = sorted((r for r in rows if r["mode"] == mode and ok(r)), key=lambda r: r[count])
        if done:
            ax_metric.plot([r[count] for r in done], [r[metric] for r in done], marker="o", label=mode)
    sp = sorted((r for r in rows if "speedup" in r), key=lambda r: r[count])
    if sp:
        ax_speed.plot([r[count] for r in sp], [r["speedup"] for r in sp], marker="o", color="C2")
        ax_speed.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax_metric.set_ylabel(metric_label)
    ax_speed.set_ylabel("speed-up (sequential / batched)")
    style_x_axes((ax_metric, ax_speed), xs, count_label)
    if ax_metric.get_lines():
        ax_metric.legend()
    failed = [f"{count.upper()}={r[count]} {r['mode']}:{r.get('error_kind')}" for r in rows if "error" in r]
    save_figure(fig, path, title, failed)


# ----------------------------------------------------------------------------- end of a run


def finish(args: argparse.Namespace, rows: list[dict], table: str, wall_line: str, meta: dict, plot) -> int:
    """Print the table and the wall-time line, write the JSON and the PNG (`plot(rows, args, path)`; a
    failed plot is reported, the numbers are already saved); return the exit status (1 if any
    configuration failed for a reason other than memory or time, i.e. a bug)."""
    print()
    print(table)
    print(wall_line)
    write_json(args.json, meta, rows)
    try:
        plot(rows, args, args.plot)
        print(f"results: {args.json}  plot: {args.plot}")
    except Exception as exc:  # noqa: BLE001 - the numbers are already saved
        print(f"results: {args.json}  (plot failed: {type(exc).__name__}: {exc})")
    return 1 if any(r.get("error_kind") == "error" for r in rows) else 0


def wall_line(wall: float, warm: float | None) -> str:
    return f"wall time: {wall:.1f} s (warm-up {warm or 0:.1f} s); load avg at end: {fmt_load(loadavg())}"
