"""Helpers shared by the training-speed benchmarks (`evaluate.py`, `experts.py`).

Argument parsers, seeded random CIFAR-shape data (an `ImageDataset` built from tensors, no
download), device set-up and synchronisation, error rows, the run's metadata (versions, load
average) and plain-text tables. Importing this module has no side effects; torch and dd are
imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    """Check the device, set the CPU thread count (0: torch's default); return the torch module."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    if threads > 0:
        torch.set_num_threads(threads)
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


def subset(data, n_train: int | None = None, n_test: int | None = None):
    """The same dataset cut to its first n_train / n_test images (for warm-up runs)."""
    from dataclasses import replace

    return replace(data, train_x=data.train_x[:n_train], train_y=data.train_y[:n_train],
                   test_x=data.test_x[:n_test], test_y=data.test_y[:n_test])


# ----------------------------------------------------------------------------- failures


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
    """Turn a failed measurement into an error row (oom, or error with its traceback printed)."""
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    if is_oom(exc):
        row.update(error=f"out of memory: {type(exc).__name__}: {first}", error_kind="oom")
    else:
        traceback.print_exc()
        row.update(error=f"{type(exc).__name__}: {first}", error_kind="error")
    return row


def ok(row: dict | None) -> bool:
    return row is not None and "error" not in row and row.get("seconds") is not None


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
            "seed": args.seed, "wall_s": round(wall_s, 1), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    if args.device == "cuda":
        import torch

        meta["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return meta


def _threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def render_table(title: str, header: list[str], body: list[list[str]], notes: list[str]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line):
        return " | ".join(s.ljust(wd) if i < 2 else s.rjust(wd) for i, (s, wd) in enumerate(zip(line, widths)))

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
