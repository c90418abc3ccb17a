"""One text run: backbone + data -> method -> evaluation -> export -> results.json.

dd.pipeline.run hands over here when the dataset config says kind=text. results.json has
the image runs' schema ({"accuracy": {mean, std, per_model}, method, dataset, ipc, model,
seed, timings, config}; plus "f1" where the dataset reports it). With `method.compare`
(attention_labels), the listed baselines run under the same backbone, data and protocol;
each writes its own results.json under compare/<name>/ (so dd-table finds them) and the
main results.json summarises them under "comparison".
"""

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dd import dist, precision, seeds
from dd.config import EvalConfig
from dd.data.text import load_text_dataset
from dd.device import describe, resolve_device
from dd.errors import DDError
from dd.export import DistilledSet
from dd.fsutil import write_file, write_json
from dd.hostmem import peak_rss_mb
from dd.models.bert import TextClassifier, load_backbone
from dd.registry import get, methods
from dd.text.base import TextRunContext, TextSynSet
from dd.tracking import Tracker, make_tracker

log = logging.getLogger(__name__)
PREVIEW_TOKENS = 24  # decoded positions per example kept in meta.json


def compare_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The baseline method configs of method.compare: schema defaults + the given overrides (typed)."""
    wanted = cfg.method.get("compare") or {}
    out = {}
    for name, overrides in wanted.items():
        baselines = [n for n in methods("text") if n != cfg.method.name]
        if name not in baselines:
            raise DDError(f"method.compare '{name}' is unknown; choose from: {', '.join(baselines)}")
        base = OmegaConf.structured(get(name).schema)
        if name in ("random_text", "loss_prune", "herding_text"):  # the same steps and batches as the distilled set
            base.inner_steps = cfg.method.inner_steps
            base.batch_per_class = cfg.method.batch_per_class
        try:
            out[name] = OmegaConf.merge(base, overrides or {})
        except Exception as e:  # omegaconf's validation errors name the key
            raise DDError(f"method.compare.{name}: {str(e).splitlines()[0]}") from None
    return out


# all that the text evaluator reads of the `eval` group; the other keys belong to the image evaluator
TEXT_EVAL_KEYS = ("num_models", "test_batch_size")
# ... and the precision of its learners and of fine-tuning on CUDA (dd.precision), recorded under "precision"
TEXT_PRECISION_KEYS = ("tf32", "autocast")


def text_settings(cfg: DictConfig) -> dict:
    """The resolved config as a text run reads it: without the image evaluator's settings (DSA, epochs, ...)
    and the expert buffer, which no text method uses; this is what results.json and meta.json record."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("buffer", None)
    resolved["eval"] = {k: resolved["eval"][k] for k in TEXT_EVAL_KEYS}
    return resolved


def check_text_config(cfg: DictConfig) -> None:
    """Refuse bad values before anything is loaded or written."""
    image_only = EvalConfig()
    for key, value in cfg.eval.items():
        if key not in TEXT_EVAL_KEYS + TEXT_PRECISION_KEYS and value != getattr(image_only, key):
            raise DDError(f"eval.{key}={value} is an image-evaluator setting that a text run would ignore; the text "
                          f"evaluator reads only {', '.join('eval.' + k for k in TEXT_EVAL_KEYS + TEXT_PRECISION_KEYS)}")
    precision.check_autocast(cfg.eval.get("autocast"), "eval.autocast")
    if "name_or_path" not in cfg.model:
        raise DDError(f"model '{cfg.model.name}' is an image model; text datasets take a text backbone: "
                      "model=minilm, bert_base or tiny_bert")
    if cfg.ipc <= 0:
        raise DDError(f"ipc={cfg.ipc} is not allowed; it must be a positive integer")
    if cfg.eval.num_models <= 0 or cfg.eval.test_batch_size <= 0:
        raise DDError(f"eval.num_models={cfg.eval.num_models}, eval.test_batch_size={cfg.eval.test_batch_size}: "
                      "both must be positive")
    compare_configs(cfg)


def text_set(syn: TextSynSet, clf, data, cfg, resolved: dict, evaluation: dict) -> DistilledSet:
    """Package a text set as a DistilledSet (tensors per DESIGN, meta with a decoded preview)."""
    t = syn.tset
    tensors = {"inputs_embeds": t.inputs_embeds.detach().cpu().float(), "attention_mask": t.attention_mask.cpu(),
               "token_type_ids": t.token_type_ids.cpu(), "labels": syn.labels.detach().cpu(),
               "lr": t.lr.detach().cpu().float().reshape(-1)}
    if tensors["labels"].is_floating_point():
        tensors["labels"] = tensors["labels"].float()
    if t.attention_labels is not None:
        tensors["attention_labels"] = t.attention_labels.detach().cpu().float()
    backbone = clf.backbone
    meta = {
        "method": cfg.method.name, "dataset": data.name, "synthetic_data": data.synthetic,
        "num_classes": data.num_classes, "class_names": list(data.class_names), "ipc": cfg.ipc,
        "max_length": data.max_length, "sentence_pairs": data.pair,
        "model": {**OmegaConf.to_container(cfg.model, resolve=True), "backbone": backbone.name,
                  "source": backbone.source, "hidden_size": clf.hidden_size, "num_layers": clf.num_layers,
                  "num_heads": clf.num_heads},
        "backbone": backbone.name, "evaluation": evaluation, "config": resolved,
        "preview": preview_lines(clf, t, data, syn.labels, PREVIEW_TOKENS), **syn.extra_meta,
    }
    return DistilledSet(tensors, meta)


def preview_lines(clf, t, data, labels, max_tokens: int | None = None, top: int = 3) -> list[str]:
    """Each example as its nearest vocabulary tokens (cosine to the word-embedding table), its label, and
    where its attention label looks: the `top` key positions of the first query row ([CLS]), averaged over
    layers and heads, as position:token (share of the attention)."""
    lines = []
    for j, tokens in enumerate(clf.nearest_tokens(t.inputs_embeds)):
        words = [w[0] for w in tokens]
        label = labels[j]
        tag = data.class_names[int(label)] if label.dim() == 0 else "[" + ", ".join(f"{v:.2f}" for v in label.tolist()) + "]"
        line = f"{j} class={data.class_names[j % data.num_classes]} label={tag}: {' '.join(words[:max_tokens])}"
        if t.attention_labels is not None:
            share = t.attention_labels[j, :, :, 0].float().mean(dim=(0, 1)).cpu()  # (L,) over the keys
            values, where = share.topk(min(top, len(share)))
            line += " | attends " + " ".join(f"{p}:{words[p]}({v:.2f})" for v, p in zip(values.tolist(), where.tolist()))
        lines.append(line)
    return lines


def precision_record(cfg: DictConfig, device) -> dict:
    """The precision settings a text run used, for results.json (they apply on CUDA only)."""
    return {"applies": torch.device(device).type == "cuda",
            "meta_gradient": {"tf32": bool(cfg.inner.get("tf32", False)), "autocast": None},
            "evaluation": {"tf32": bool(cfg.eval.get("tf32", True)), "autocast": cfg.eval.get("autocast")}}


def results_of(name: str, evaluation, data, cfg, model_name: str, timings: dict, resolved: dict) -> dict:
    results = {
        "accuracy": {"mean": evaluation.mean, "std": evaluation.std, "per_model": evaluation.per_model},
        "method": name, "dataset": data.name, "ipc": cfg.ipc, "model": model_name, "seed": cfg.seed,
        "eval": {"num_models": len(evaluation.per_model), "steps": evaluation.steps},
        "timings": timings, "config": resolved,
    }
    if evaluation.f1 is not None:
        results["f1"] = evaluation.f1
    if evaluation.macro_f1 is not None:
        results["macro_f1"] = evaluation.macro_f1
    results["majority_rate"] = evaluation.majority_rate
    results["single_class_fraction"] = evaluation.single_class_fraction
    return results


def run_text(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    out_dir = Path(out_dir)
    if dist.world() > 1:
        raise DDError(f"text runs are one process; this job has {dist.world()} (run dd-distill without torchrun/srun "
                      "tasks; image runs share their work over processes)")
    check_text_config(cfg)
    device = resolve_device(cfg.device)
    precision.start_run(cfg)
    start = t0 = time.perf_counter()
    backbone = load_backbone(cfg.model)
    data = load_text_dataset(cfg.dataset, backbone.tokenizer)
    limit = getattr(backbone.config, "max_position_embeddings", None)
    if limit is not None and data.max_length > limit:
        raise DDError(f"dataset.max_length={data.max_length} is more than {backbone.name} takes ({limit} positions)")
    clf = TextClassifier(backbone, data.num_classes).to(device)
    timings = {"data_s": time.perf_counter() - t0}
    resolved = text_settings(cfg)
    model_name = cfg.model.name
    tracker = make_tracker(cfg.logger, resolved, out_dir, name=out_dir.name, group=group)
    ctx = TextRunContext(cfg=cfg, data=data, device=device, out_dir=out_dir, tracker=tracker, progress=cfg.progress,
                         classifier=clf)
    try:
        seeds.seed_global("global", cfg.seed)
        t0 = time.perf_counter()
        syn = get(cfg.method.name).run(ctx)
        timings["method_s"] = time.perf_counter() - t0
        timings.update(syn.timings)
        evaluation = syn.evaluation
        timings["evaluate_s"] = evaluation.seconds
        log.info("%s %s ipc=%d: %s", cfg.method.name, data.name, cfg.ipc, evaluation)
        comparison = {}
        for name, method_cfg in compare_configs(cfg).items():
            # the run's config with the baseline as its method (a plain copy: the schemas differ)
            # (with the learners' precision, which `resolved` leaves out of the eval section it records)
            sub = OmegaConf.create({**resolved, "method": OmegaConf.to_container(method_cfg),
                                    "eval": {**resolved["eval"], **{k: cfg.eval[k] for k in TEXT_PRECISION_KEYS
                                                                     if k in cfg.eval}}})
            sub_dir = out_dir / "compare" / name
            t0 = time.perf_counter()
            sub_syn = get(name).run(TextRunContext(cfg=sub, data=data, device=device, out_dir=sub_dir,
                                                   tracker=Tracker(), progress=cfg.progress, classifier=clf))
            sub_res = results_of(name, sub_syn.evaluation, data, sub, model_name,
                                 {**sub_syn.timings, "total_s": time.perf_counter() - t0},
                                 OmegaConf.to_container(sub, resolve=True))
            sub_res["method_info"] = {k: v for k, v in sub_syn.extra_meta.items() if k != "texts"}
            write_json(sub_dir / "results.json", sub_res)
            comparison[name] = {k: sub_res[k] for k in ("accuracy", "f1", "macro_f1", "single_class_fraction", "timings")
                                if k in sub_res}
            log.info("%s %s ipc=%d: %s", name, data.name, cfg.ipc, sub_syn.evaluation)
        if syn.export and cfg.export:
            dset = text_set(syn, clf, data, cfg, resolved, evaluation.as_dict())
            dset.save(out_dir / "distilled")
            write_file(out_dir / "preview.txt",
                       lambda p: p.write_text("\n".join(preview_lines(clf, syn.tset, data, syn.labels)) + "\n"))
            tracker.log_artifact(out_dir / "distilled", f"{data.name}-{cfg.method.name}-ipc{cfg.ipc}", "dataset",
                                 aliases=["best", "latest"])
        timings["total_s"] = time.perf_counter() - start
        timings["peak_rss_mb"] = peak_rss_mb()
        results = results_of(cfg.method.name, evaluation, data, cfg, model_name, timings, resolved)
        results["backbone"] = backbone.name
        results["device"] = describe(device)
        results["precision"] = precision_record(cfg, device)
        results["method_info"] = {k: v for k, v in syn.extra_meta.items() if k != "texts"}
        if cfg.method.get("select") == "best_test":  # never let this pass for a clean number
            results["selected_on_test_split"] = True
        if comparison:
            results["comparison"] = comparison
        tracker.summary({"test_acc_mean": evaluation.mean, "test_acc_std": evaluation.std})
        write_json(out_dir / "results.json", results)
        return results
    finally:
        tracker.finish()
