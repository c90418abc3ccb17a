"""dd-eval: an exported image set scored on any architecture (cross-architecture generalisation), with the
same evaluator as dd-distill and, with eval.protocol=robust, DD-Ranking's label- and augmentation-robust
scores. Its results.json has dd.results' schema (kind image).
"""

import functools
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dd import dist, precision
from dd.data import load_image_dataset
from dd.device import describe, resolve_device
from dd.errors import DDError
from dd.export import META_FILE, load
from dd.image.evaluate import check_protocol, evaluate_set
from dd.image.kind import accuracy_of, check_labels
from dd.image.relabel import LabelStore, label_source, relabel_config, relabel_random
from dd.image.robust import evaluate_robust
from dd.image.teachers import get_teacher, load_teacher
from dd.image.train import model_options
from dd.results import record
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
    details = {
        "ipc": ds.meta.get("ipc"),
        "model_options": options,
        "distilled_with": (ds.meta.get("model") or {}).get("name"),
        "set": str(Path(cfg.path).resolve()),
        "eval": {"epochs": result.epochs, "lr": result.lr, "num_models": len(result.per_model), "protocol": protocol,
                 "optimizer": cfg.eval.optimizer, "labels": label_mode,
                 **({"temperature": cfg.eval.temperature} if source is not None else {})},
        # the stored soft labels' bytes count where the students train on them
        **({"storage": ds.meta["storage"]} if "storage" in ds.meta and label_mode == "stored" else {}),
        **({"robust": robust} if robust is not None else {}),
    }
    timings = {"evaluate_s": result.seconds, "total_s": time.perf_counter() - start}
    if robust is not None:
        timings["robust_s"] = sum(c["seconds"] for c in robust["conditions"].values() if "same_run_as" not in c)
    if dist.is_main():  # one writer per job
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(cfg.path) / META_FILE, out_dir / "set_meta.json")
    return record(out_dir, kind="image", method=ds.meta.get("method"), dataset=ds.meta.get("dataset"), model=name,
                  seed=cfg.seed, metric=accuracy_of(result), details=details, timings=timings,
                  device=describe(device), precision=precision.record(cfg, device),
                  selection=ds.meta.get("selection"), config=resolved)
