"""One distillation run: data -> method -> evaluation -> export -> results.json.

The CLI is a thin shell around `run`; a Python user can call it directly with
a composed config and an output folder.
"""

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dd import seeds
from dd.data import load_image_dataset
from dd.device import resolve_device
from dd.errors import DDError
from dd.evaluate import evaluate_set, model_options
from dd.export import image_set
from dd.fsutil import write_json
from dd.methods import METHODS, RunContext, run_method
from dd.tracking import make_tracker
from dd.viz import save_grid

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Refuse bad values before anything is written."""
    if cfg.method.name not in METHODS:
        raise DDError(f"method '{cfg.method.name}' is unknown; choose one of: {', '.join(METHODS)}")
    if cfg.ipc <= 0:
        raise DDError(f"ipc={cfg.ipc} is not allowed; it must be a positive integer")
    from dd.methods.text_base import TEXT_METHODS  # text methods need a text dataset

    if cfg.method.name in TEXT_METHODS:
        raise DDError(f"method '{cfg.method.name}' needs a text dataset (dataset=synthetic_topics, ag_news, sst2, "
                      f"qnli, mrpc or text_files); dataset '{cfg.dataset.name}' holds images")
    if "name_or_path" in cfg.model:
        raise DDError(f"model '{cfg.model.name}' is a text backbone; image datasets take an image model (e.g. model=convnet)")
    if not (cfg.eval.lr > 0):
        raise DDError(f"eval.lr={cfg.eval.lr} is not allowed; it must be positive")
    if cfg.eval.num_models <= 0 or cfg.eval.epochs <= 0:
        raise DDError(f"eval.num_models={cfg.eval.num_models}, eval.epochs={cfg.eval.epochs}: both must be positive")


def load_data(cfg: DictConfig):
    d = cfg.dataset
    return load_image_dataset(
        d.name, root=d.root, download=d.download, source=d.source, zca=d.zca, zca_eps=d.zca_eps,
        image_size=d.image_size, train_limit=d.train_limit, stats=d.get("stats"),
    )


def export_set(syn, folder, aliases, evaluation, data, cfg, model, resolved, out_dir, tracker):
    dset = image_set(
        syn.images, syn.labels, data, lr=syn.lr, method=cfg.method.name, ipc=cfg.ipc, model=model, config=resolved,
        evaluation=None if evaluation is None else evaluation.as_dict(), extra_meta=syn.extra_meta,
    )
    dset.save(out_dir / folder)
    tracker.log_artifact(out_dir / folder, f"{data.name}-{cfg.method.name}-ipc{cfg.ipc}", "dataset", aliases=aliases)


def run(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    if cfg.dataset.get("kind") == "text":  # text datasets have their own pipeline (BERT, attention labels)
        from dd.text_pipeline import run_text

        return run_text(cfg, out_dir, group=group)
    out_dir = Path(out_dir)
    check_config(cfg)
    device = resolve_device(cfg.device)
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
        syn = run_method(ctx)
        timings["method_s"] = time.perf_counter() - t0
        timings.update(syn.timings)
        evaluation = syn.evaluation
        if evaluation is None:
            lr = None if syn.lr is None else float(syn.lr.reshape(-1)[-1])
            evaluation = evaluate_set(
                syn.images, syn.labels, data, cfg.model, cfg.eval, lr=lr, seed=cfg.seed, device=device,
                progress=cfg.progress,
            )
        timings["evaluate_s"] = evaluation.seconds
        model_name, model_opts = model_options(cfg.model)
        if syn.export and cfg.export:
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
            "eval": {"epochs": evaluation.epochs, "lr": evaluation.lr, "num_models": len(evaluation.per_model),
                     "schedule": cfg.eval.schedule},
            **({"paper_max": syn.extra_meta["paper_max"]} if "paper_max" in syn.extra_meta else {}),
            "timings": {**timings, "total_s": time.perf_counter() - start},
            "config": resolved,
        }
        tracker.summary({"test_acc_mean": evaluation.mean, "test_acc_std": evaluation.std})
        write_json(out_dir / "results.json", results)
        return results
    finally:
        tracker.finish()
