"""Evaluating an exported set with the standard protocol on any architecture (dd-eval)."""

import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dd.data import load_image_dataset
from dd.device import resolve_device
from dd.errors import DDError
from dd.evaluate import evaluate_set, model_options
from dd.export import META_FILE, load
from dd.fsutil import write_json
from dd.tracking import make_tracker


def dataset_of(meta: dict, root: str | None):
    """Load the set's dataset with the preprocessing recorded in its meta (root may be overridden)."""
    d = dict((meta.get("config") or {}).get("dataset") or {})
    d["name"] = meta["dataset"]
    if root is not None:
        d["root"] = root
    data = load_image_dataset(
        d["name"], root=d.get("root"), download=bool(d.get("download", False)), source=d.get("source", "torchvision"),
        zca=bool(meta.get("zca")), zca_eps=float(d.get("zca_eps", 0.1)), image_size=d.get("image_size"),
        train_limit=d.get("train_limit"), stats=d.get("stats"),
    )
    if [round(v, 4) for v in data.mean] != [round(float(v), 4) for v in meta["mean"]]:
        old_zca = " (ZCA is now fitted on raw pixels, so ZCA sets exported before that cannot be re-evaluated)"
        raise DDError(f"the set was normalised with mean {meta['mean']} but {data.name} loads with {data.mean}; "
                      f"the preprocessing differs{old_zca if meta.get('zca') else ''}")
    return data


def evaluate_exported(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    out_dir = Path(out_dir)
    start = time.perf_counter()
    ds = load(cfg.path)
    if ds.kind != "image":
        raise DDError(f"{cfg.path} is a text set; dd-eval evaluates image sets (text sets are scored by dd-distill)")
    model_cfg = cfg.model if cfg.model is not None else OmegaConf.create(ds.meta.get("model") or {"name": "convnet"})
    if model_cfg.get("name") in (None, "unknown"):
        raise DDError(f"{cfg.path} does not record its model; choose one with model=<name>")
    device = resolve_device(cfg.device)
    data = dataset_of(ds.meta, cfg.dataset_root)
    lr = float(ds.lr.reshape(-1)[-1]) if ds.lr is not None and cfg.use_set_lr else None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = make_tracker(cfg.logger, resolved, out_dir, name=out_dir.name, group=group)
    try:
        result = evaluate_set(ds.images, ds.labels, data, model_cfg, cfg.eval, lr=lr, seed=cfg.seed, device=device,
                              progress=cfg.progress)
        tracker.summary({"test_acc_mean": result.mean, "test_acc_std": result.std})
    finally:
        tracker.finish()
    name, options = model_options(model_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(cfg.path) / META_FILE, out_dir / "set_meta.json")
    results = {
        "accuracy": {"mean": result.mean, "std": result.std, "per_model": result.per_model},
        "method": ds.meta.get("method"),
        "dataset": ds.meta.get("dataset"),
        "ipc": ds.meta.get("ipc"),
        "model": name,
        "model_options": options,
        "distilled_with": (ds.meta.get("model") or {}).get("name"),
        "seed": cfg.seed,
        "set": str(Path(cfg.path).resolve()),
        "eval": {"epochs": result.epochs, "lr": result.lr, "num_models": len(result.per_model)},
        "timings": {"evaluate_s": result.seconds, "total_s": time.perf_counter() - start},
        "config": resolved,
    }
    write_json(out_dir / "results.json", results)
    return results
