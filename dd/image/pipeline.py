"""The image runs: dd-distill (data -> method -> evaluation -> export -> results.json) and dd-eval
(an exported set -> fresh models of any architecture -> results.json).

The CLIs are thin shells around `run` and `evaluate_exported`; a Python user can call them with
a composed config and an output folder.
"""

import functools
import logging
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dd import dist, precision, seeds
from dd.data import load_image_dataset
from dd.device import describe, resolve_device
from dd.errors import DDError
from dd.export import META_FILE, image_set, load
from dd.fsutil import write_json
from dd.image.evaluate import check_protocol, evaluate_set
from dd.image.relabel import (
    LABEL_MODES,
    LabelStore,
    check_temperature,
    label_source,
    relabel_config,
    relabel_random,
)
from dd.image.robust import evaluate_robust
from dd.image.teachers import get_teacher, load_teacher
from dd.image.train import model_options
from dd.registry import RunContext, get
from dd.tracking import make_tracker
from dd.viz import save_grid

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Refuse bad values before anything is written (the method's kind is checked by dd.pipeline)."""
    if cfg.ipc <= 0:
        raise DDError(f"ipc={cfg.ipc} is not allowed; it must be a positive integer")
    if "name_or_path" in cfg.model:
        raise DDError(f"model '{cfg.model.name}' is a text backbone; image datasets take an image model (e.g. model=convnet)")
    if not (cfg.eval.lr > 0):
        raise DDError(f"eval.lr={cfg.eval.lr} is not allowed; it must be positive")
    if cfg.eval.num_models <= 0 or cfg.eval.epochs <= 0:
        raise DDError(f"eval.num_models={cfg.eval.num_models}, eval.epochs={cfg.eval.epochs}: both must be positive")
    check_protocol(cfg.eval, allowed=("standard",))
    check_labels(cfg.eval)
    precision.check_autocast(cfg.eval.get("autocast"), "eval.autocast")
    precision.check_autocast(cfg.buffer.get("autocast"), "buffer.autocast")


def check_labels(eval_cfg) -> None:
    if eval_cfg.get("labels", "auto") not in LABEL_MODES:
        raise DDError(f"eval.labels '{eval_cfg.labels}' is unknown; choose one of: {', '.join(LABEL_MODES)}")
    check_temperature(eval_cfg.get("temperature", 1.0))


def load_data(cfg: DictConfig):
    d = cfg.dataset
    return load_image_dataset(
        d.name, root=d.root, download=d.download, source=d.source, zca=d.zca, zca_eps=d.zca_eps,
        image_size=d.image_size, train_limit=d.train_limit, stats=d.get("stats"),
        holdout_per_class=d.get("holdout_per_class") or 0,
    )


def export_set(syn, folder, aliases, evaluation, data, cfg, model, resolved, out_dir, tracker):
    dset = image_set(
        syn.images, syn.labels, data, lr=syn.lr, method=cfg.method.name, ipc=cfg.ipc, model=model, config=resolved,
        evaluation=None if evaluation is None else evaluation.as_dict(), extra_meta=syn.extra_meta,
        extra_tensors=syn.extra_tensors,
    )
    dset.save(out_dir / folder)
    tracker.log_artifact(out_dir / folder, f"{data.name}-{cfg.method.name}-ipc{cfg.ipc}", "dataset", aliases=aliases)


def run_image(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    out_dir = Path(out_dir)
    check_config(cfg)
    device = resolve_device(cfg.device)
    precision.start_run(cfg)
    timings = {}
    start = t0 = time.perf_counter()
    data = load_data(cfg)
    timings["data_s"] = time.perf_counter() - t0
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = make_tracker(cfg.logger, resolved, out_dir, name=out_dir.name, group=group)
    ctx = RunContext(cfg=cfg, data=data, device=device, out_dir=out_dir, tracker=tracker, progress=cfg.progress)
    try:
        seeds.seed_global("global", cfg.seed)
        t0 = time.perf_counter()
        syn = get(cfg.method.name).run(ctx)
        timings["method_s"] = time.perf_counter() - t0
        timings.update(syn.timings)
        evaluation = syn.evaluation
        store = LabelStore.from_tensors(syn.extra_tensors, data.num_classes)
        source, label_mode = label_source(cfg.eval, cfg.relabel, store,
                                          lambda: get_teacher(cfg, data, device, cfg.progress), data.flip)
        if evaluation is None or source is not None:  # a method's own evaluation used the set's labels
            lr = None if syn.lr is None else float(syn.lr.reshape(-1)[-1])
            evaluation = evaluate_set(
                syn.images, syn.labels, data, cfg.model, cfg.eval, lr=lr, seed=cfg.seed, device=device,
                progress=cfg.progress, labels_from=source,
            )
        timings["evaluate_s"] = evaluation.seconds
        model_name, model_opts = model_options(cfg.model)
        if syn.export and cfg.export and dist.is_main():  # one writer per job
            model = {"name": model_name, **model_opts}
            export_set(syn, "distilled", ["best", "latest"], evaluation, data, cfg, model, resolved, out_dir, tracker)
            if syn.last is not None:
                export_set(syn.last, "distilled_last", ["last"], syn.last.evaluation, data, cfg, model, resolved,
                           out_dir, tracker)
            save_grid(data.to_pixels(syn.images.detach().cpu()), syn.labels.cpu(), data.class_names, out_dir / "grid.png",
                      title=f"{cfg.method.name} {data.name} ipc={cfg.ipc}: {evaluation}")
            tracker.log_image("grid", out_dir / "grid.png")
        results = {
            "accuracy": {"mean": evaluation.mean, "std": evaluation.std, "per_model": evaluation.per_model},
            "method": cfg.method.name,
            "dataset": data.name,
            "ipc": cfg.ipc,
            "model": model_name,
            "seed": cfg.seed,
            "device": describe(device),
            "precision": precision.record(cfg, device),
            "eval": {"epochs": evaluation.epochs, "lr": evaluation.lr, "num_models": len(evaluation.per_model),
                     "schedule": cfg.eval.schedule, "optimizer": cfg.eval.optimizer, "labels": label_mode,
                     **({"temperature": cfg.eval.temperature} if source is not None else {})},
            **({"storage": syn.extra_meta["storage"]} if "storage" in syn.extra_meta and label_mode == "stored" else {}),
            **({"teacher": syn.extra_meta["teacher"]} if "teacher" in syn.extra_meta else {}),
            **({"paper_max": syn.extra_meta["paper_max"]} if syn.extra_meta.get("paper_max") else {}),
            # the split the method picked its set (or lr) on: test | val, or null (no pick; dd.image.rounds)
            "selection": syn.extra_meta.get("selection"),
            "timings": {**timings, "total_s": time.perf_counter() - start},
            "config": resolved,
        }
        tracker.summary({"test_acc_mean": evaluation.mean, "test_acc_std": evaluation.std})
        if dist.is_main():
            write_json(out_dir / "results.json", results)
        return results
    finally:
        tracker.finish()


def dataset_of(meta: dict, root: str | None):
    """Load the set's dataset with the preprocessing recorded in its meta (root may be overridden)."""
    d = dict((meta.get("config") or {}).get("dataset") or {})
    d["name"] = meta["dataset"]
    if root is not None:
        d["root"] = root
    data = load_image_dataset(
        d["name"], root=d.get("root"), download=bool(d.get("download", False)), source=d.get("source", "torchvision"),
        zca=bool(meta.get("zca")), zca_eps=float(d.get("zca_eps", 0.1)), image_size=d.get("image_size"),
        train_limit=d.get("train_limit"), stats=d.get("stats"), holdout_per_class=d.get("holdout_per_class") or 0,
    )
    if [round(v, 4) for v in data.mean] != [round(float(v), 4) for v in meta["mean"]]:
        old_zca = " (ZCA is now fitted on raw pixels, so ZCA sets exported before that cannot be re-evaluated)"
        raise DDError(f"the set was normalised with mean {meta['mean']} but {data.name} loads with {data.mean}; "
                      f"the preprocessing differs{old_zca if meta.get('zca') else ''}")
    return data


def set_teacher(cfg, meta: dict, data, device):
    """dd-eval's teacher: teacher.path, else the one the set's meta records, else teacher.*'s for the set's data."""
    if cfg.teacher.path:
        return load_teacher(cfg.teacher.path, data, device, model_cfg=cfg.teacher.model)
    recorded = meta.get("teacher") or {}
    if recorded.get("folder"):
        return load_teacher(recorded["folder"], data, device)
    if recorded.get("file"):
        return load_teacher(recorded["file"], data, device, model_cfg=recorded.get("model"))
    # a set made without a teacher (MTT, a coreset): the teacher.* recipe's, for the set's dataset and
    # preprocessing, from the cache (trained there if missing), as dd-distill would find it
    made = (meta.get("config") or {}).get("dataset")
    if not made:
        raise DDError("this evaluation needs a teacher and the set records neither one nor its dataset config; "
                      "give teacher.path=<dd-teacher folder or state-dict file>")
    run_like = OmegaConf.create({"dataset": made, "model": meta.get("model") or {"name": "convnet"},
                                 "teacher": cfg.teacher})
    return get_teacher(run_like, data, device, cfg.progress)


def evaluate_exported(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    out_dir = Path(out_dir)
    start = time.perf_counter()
    protocol = check_protocol(cfg.eval)
    ds = load(cfg.path)
    if ds.kind != "image":
        raise DDError(f"{cfg.path} is a text set; dd-eval evaluates image sets (text sets are scored by dd-distill)")
    model_cfg = cfg.model if cfg.model is not None else OmegaConf.create(ds.meta.get("model") or {"name": "convnet"})
    if model_cfg.get("name") in (None, "unknown"):
        raise DDError(f"{cfg.path} does not record its model; choose one with model=<name>")
    device = resolve_device(cfg.device)
    precision.start_run(cfg)
    data = dataset_of(ds.meta, cfg.dataset_root)
    lr = float(ds.lr.reshape(-1)[-1]) if ds.lr is not None and cfg.use_set_lr else None
    check_labels(cfg.eval)
    store = LabelStore.from_tensors(ds.tensors, data.num_classes)
    relabel_cfg = relabel_config(cfg.relabel, ds.meta)
    teacher = functools.cache(lambda: set_teacher(cfg, ds.meta, data, device))
    source, label_mode = label_source(cfg.eval, relabel_cfg, store, teacher, data.flip)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = make_tracker(cfg.logger, resolved, out_dir, name=out_dir.name, group=group)
    robust = None
    try:
        if protocol == "robust":  # its syn_own condition is the standard evaluation (same models)
            relabel = None if source is None else relabel_random(source, teacher(), relabel_cfg, data.flip, cfg.seed)
            robust = evaluate_robust(ds.images, ds.labels, data, model_cfg, cfg.eval, lr=lr, seed=cfg.seed,
                                     device=device, progress=cfg.progress, labels_from=source, relabel=relabel)
            result = robust.conditions["syn_own"]
        else:
            result = evaluate_set(ds.images, ds.labels, data, model_cfg, cfg.eval, lr=lr, seed=cfg.seed,
                                  device=device, progress=cfg.progress, labels_from=source)
        tracker.summary({"test_acc_mean": result.mean, "test_acc_std": result.std})
        if robust is not None:
            robust = robust.as_dict()
            tracker.summary({f"{s}_mean": robust[s]["mean"] for s in ("lrs", "ars", "lrs_hard") if s in robust})
    finally:
        tracker.finish()
    name, options = model_options(model_cfg)
    results = {
        "accuracy": {"mean": result.mean, "std": result.std, "per_model": result.per_model},
        "method": ds.meta.get("method"),
        "dataset": ds.meta.get("dataset"),
        "ipc": ds.meta.get("ipc"),
        "model": name,
        "model_options": options,
        "distilled_with": (ds.meta.get("model") or {}).get("name"),
        "seed": cfg.seed,
        "device": describe(device),
        "precision": precision.record(cfg, device),
        "set": str(Path(cfg.path).resolve()),
        "eval": {"epochs": result.epochs, "lr": result.lr, "num_models": len(result.per_model), "protocol": protocol,
                 "optimizer": cfg.eval.optimizer, "labels": label_mode,
                 **({"temperature": cfg.eval.temperature} if source is not None else {})},
        # the stored soft labels' bytes count where the students train on them
        **({"storage": ds.meta["storage"]} if "storage" in ds.meta and label_mode == "stored" else {}),
        **({"robust": robust} if robust is not None else {}),
        "timings": {"evaluate_s": result.seconds, "total_s": time.perf_counter() - start},
        "config": resolved,
    }
    if robust is not None:
        results["timings"]["robust_s"] = sum(c["seconds"] for c in robust["conditions"].values()
                                             if "same_run_as" not in c)
    if dist.is_main():  # one writer per job
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(cfg.path) / META_FILE, out_dir / "set_meta.json")
        write_json(out_dir / "results.json", results)
    return results
