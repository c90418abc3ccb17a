"""The text kind: its root config and its phases of dd.pipeline.run.

load the backbone and the tokenised TextDataset -> the method gets a TextRunContext (with the classifier)
-> its TextSynSet scored (methods score their sets under their own protocol; what they leave unscored is
scored here), with the baselines of `method.compare` run beside it under the same backbone, data and
protocol (each writes its own results.json under compare/<name>/, so dd-table finds them) -> the set
exported with a decoded preview -> accuracy (and macro-F1) recorded.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dd import dist, precision
from dd.config import RunConfig
from dd.data.text import TextDataset, load_text_dataset
from dd.device import describe
from dd.errors import DDError
from dd.export import DistilledSet
from dd.fsutil import write_file
from dd.hostmem import peak_rss_mb
from dd.inner.engines import InnerConfig
from dd.models.bert import TextClassifier, load_backbone
from dd.registry import registry
from dd.results import Metric, record
from dd.text.base import TextRunContext, TextSynSet
from dd.text.evaluate import TextEvalConfig, evaluate_text_set
from dd.tracking import Tracker

log = logging.getLogger(__name__)
PREVIEW_TOKENS = 24  # decoded positions per example kept in meta.json


@dataclass
class TextRunConfig(RunConfig):
    """A text run's root: the shared keys plus the text sections."""

    ipc: int = 10  # examples per class
    eval: TextEvalConfig = field(default_factory=TextEvalConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)  # the meta-gradient engine (attention_labels)
    run_name: str = "${method.name}_${dataset.name}_ipc${ipc}"


def compare_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The baseline method configs of method.compare: schema defaults + the given overrides (typed). Baselines
    that train on a set the way the distilled one is trained (a registry query: their schema has inner_steps
    and batch_per_class) take the distilled set's steps and batches."""
    wanted = cfg.method.get("compare") or {}
    methods = registry("text")
    baselines = [n for n in methods.names() if n != cfg.method.name]
    same_steps = methods.with_fields("inner_steps", "batch_per_class")
    out = {}
    for name, overrides in wanted.items():
        if name not in baselines:
            methods.get(name)  # a renamed name is refused with its new one
            raise DDError(f"method.compare '{name}' is unknown; choose from: {', '.join(baselines)}")
        base = OmegaConf.structured(methods.get(name).schema)
        base.name = name
        if name in same_steps:
            base.inner_steps = cfg.method.inner_steps
            base.batch_per_class = cfg.method.batch_per_class
        try:
            out[name] = OmegaConf.merge(base, overrides or {})
        except Exception as e:  # omegaconf's validation errors name the key
            raise DDError(f"method.compare.{name}: {str(e).splitlines()[0]}") from None
    return out


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


def accuracy_of(evaluation) -> Metric:
    return Metric("accuracy", evaluation.mean, evaluation.std, list(evaluation.per_model))


def scores_of(evaluation, syn: TextSynSet, cfg) -> dict:
    """A text result's details beside its headline: F1 where the dataset reports it, macro-F1, and how often
    the learners collapse to one class."""
    out = {"ipc": cfg.ipc, "eval": {"num_models": len(evaluation.per_model), "steps": evaluation.steps}}
    if evaluation.f1 is not None:
        out["f1"] = evaluation.f1
    if evaluation.macro_f1 is not None:
        out["macro_f1"] = evaluation.macro_f1
    out["majority_rate"] = evaluation.majority_rate
    out["single_class_fraction"] = evaluation.single_class_fraction
    out["method_info"] = {k: v for k, v in syn.extra_meta.items() if k != "texts"}
    return out


@dataclass
class LoadedText:
    dataset: TextDataset
    classifier: TextClassifier  # the pretrained backbone with a head for the dataset's classes


class TextKind:
    name = "text"

    def check(self, cfg: DictConfig) -> None:
        """Refuse bad values before anything is loaded or written."""
        if dist.world() > 1:
            raise DDError(f"text runs are one process; this job has {dist.world()} (run dd-distill without "
                          "torchrun/srun tasks; image runs share their work over processes)")
        precision.check_autocast(cfg.eval.get("autocast"), "eval.autocast")
        if cfg.ipc <= 0:
            raise DDError(f"ipc={cfg.ipc} is not allowed; it must be a positive integer")
        if cfg.eval.num_models <= 0 or cfg.eval.test_batch_size <= 0:
            raise DDError(f"eval.num_models={cfg.eval.num_models}, eval.test_batch_size={cfg.eval.test_batch_size}: "
                          "both must be positive")
        compare_configs(cfg)

    def load(self, cfg: DictConfig, device):
        backbone = load_backbone(cfg.model)
        data = load_text_dataset(cfg.dataset, backbone.tokenizer)
        limit = getattr(backbone.config, "max_position_embeddings", None)
        if limit is not None and data.max_length > limit:
            raise DDError(f"dataset.max_length={data.max_length} is more than {backbone.name} takes ({limit} positions)")
        return LoadedText(data, TextClassifier(backbone, data.num_classes).to(device))

    def resolved(self, cfg: DictConfig) -> dict:
        return OmegaConf.to_container(cfg, resolve=True)

    def model_name(self, cfg: DictConfig) -> str:
        return cfg.model.name

    def context(self, cfg, loaded: "LoadedText", device, out_dir: Path, tracker) -> TextRunContext:
        return TextRunContext(cfg=cfg, data=loaded.dataset, device=device, out_dir=out_dir, tracker=tracker,
                              progress=cfg.progress, classifier=loaded.classifier)

    def evaluate(self, ctx: TextRunContext, syn: TextSynSet, clock):
        from dd.pipeline import Outcome

        cfg, data, clf = ctx.cfg, ctx.data, ctx.classifier
        evaluation = syn.evaluation
        if evaluation is None:  # the method handed its set over unscored
            evaluation = evaluate_text_set(clf, syn.tset, data, cfg.eval.num_models, seed=cfg.seed,
                                           batch_size=cfg.eval.test_batch_size, progress=cfg.progress,
                                           tf32=bool(cfg.eval.tf32), autocast=cfg.eval.autocast)
        log.info("%s %s ipc=%d: %s", cfg.method.name, data.name, cfg.ipc, evaluation)
        details = {"backbone": clf.backbone.name, **scores_of(evaluation, syn, cfg)}
        if cfg.method.get("select") == "best_test":  # never let this pass for a clean number
            details["selected_on_test_split"] = True
        with clock("compare_s"):
            comparison = self.compare(ctx)
        if comparison:
            details["comparison"] = comparison
        timings = {**syn.timings, "evaluate_s": evaluation.seconds, "peak_rss_mb": peak_rss_mb()}
        return Outcome(accuracy_of(evaluation), details, timings, result=evaluation,
                       selection={"split": "test", "by": "method.select=best_test"} if details.get(
                           "selected_on_test_split") else None,
                       summary={"test_acc_mean": evaluation.mean, "test_acc_std": evaluation.std})

    def compare(self, ctx: TextRunContext) -> dict:
        """method.compare's baselines on the same backbone, data and protocol, each filed under compare/<name>/."""
        cfg, data = ctx.cfg, ctx.data
        out = {}
        for name, method_cfg in compare_configs(cfg).items():
            # the run's config with the baseline as its method (a plain copy: the schemas differ)
            sub = OmegaConf.create({**OmegaConf.to_container(cfg, resolve=True),
                                    "method": OmegaConf.to_container(method_cfg)})
            sub_dir = ctx.out_dir / "compare" / name
            t0 = time.perf_counter()
            sub_syn = registry("text").run(name, TextRunContext(cfg=sub, data=data, device=ctx.device, out_dir=sub_dir,
                                                                tracker=Tracker(), progress=cfg.progress,
                                                                classifier=ctx.classifier))
            ev = sub_syn.evaluation
            res = record(sub_dir, kind="text", method=name, dataset=data.name, model=cfg.model.name, seed=cfg.seed,
                         metric=accuracy_of(ev), details={"backbone": ctx.classifier.backbone.name,
                                                          **scores_of(ev, sub_syn, cfg)},
                         timings={**sub_syn.timings, "total_s": time.perf_counter() - t0},
                         device=describe(ctx.device), precision=precision.record(sub, ctx.device), selection=None,
                         config=OmegaConf.to_container(sub, resolve=True))
            out[name] = {k: res[k] for k in ("metric", "f1", "macro_f1", "single_class_fraction", "timings") if k in res}
            log.info("%s %s ipc=%d: %s", name, data.name, cfg.ipc, ev)
        return out

    def export(self, ctx: TextRunContext, syn: TextSynSet, outcome, resolved: dict) -> dict:
        """The set as safetensors + meta (with a decoded preview), and preview.txt."""
        if not syn.export:  # method=full: no small set
            return {}
        cfg, data, clf = ctx.cfg, ctx.data, ctx.classifier
        dset = text_set(syn, clf, data, cfg, resolved, outcome.result.as_dict())
        dset.save(ctx.out_dir / "distilled")
        write_file(ctx.out_dir / "preview.txt",
                   lambda p: p.write_text("\n".join(preview_lines(clf, syn.tset, data, syn.labels)) + "\n"))
        ctx.tracker.log_artifact(ctx.out_dir / "distilled", f"{data.name}-{cfg.method.name}-ipc{cfg.ipc}", "dataset",
                                 aliases=["best", "latest"])
        return {}


KIND = TextKind()
