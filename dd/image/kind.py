"""The image kind: its root config and its phases of dd.pipeline.run.

load the ImageDataset -> the method gets a RunContext -> fresh models trained on its SynSet (unless the
method evaluated it, and with the teacher's labels where eval.labels asks) -> the set exported with its
grid -> accuracy recorded.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from dd import dist, precision
from dd.config import RunConfig
from dd.data import load_image_dataset
from dd.errors import DDError
from dd.export import image_set
from dd.image.base import SynSet
from dd.image.evaluate import EvalConfig, check_protocol, evaluate_set
from dd.image.experts import BufferConfig
from dd.image.relabel import LABEL_MODES, LabelStore, RelabelConfig, check_temperature, label_source
from dd.image.teachers import TeacherConfig, get_teacher
from dd.image.train import model_options
from dd.inner.engines import InnerConfig
from dd.registry import RunContext
from dd.results import Metric
from dd.tracking import LoggerConfig
from dd.viz import save_grid


@dataclass
class ImageRunConfig(RunConfig):
    """An image run's root: the shared keys plus the image sections."""

    ipc: int = 10  # images per class
    eval: EvalConfig = field(default_factory=EvalConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)  # the meta-gradient engine (mtt, datm)
    buffer: BufferConfig = field(default_factory=BufferConfig)  # expert trajectories (mtt, datm)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # sre2l, rded, eval.labels=teacher
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    run_name: str = "${method.name}_${dataset.name}_ipc${ipc}"


@dataclass
class EvalSetConfig:
    """dd-eval's root: evaluate an exported image set on an architecture."""

    path: str = MISSING
    model: Any = None  # None: the model the set was distilled with
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    use_set_lr: bool = True  # train with the set's learned lr when it has one
    dataset_root: str | None = None  # where the set's dataset lives, if not where it was recorded
    seed: int = 0
    device: str = "${oc.env:DD_DEVICE,auto}"
    cudnn_benchmark: bool = True
    progress: bool = True
    # eval.labels=teacher: the teacher (null path: the one the set's meta records); stored labels come with the set
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)


def check_labels(eval_cfg) -> None:
    if eval_cfg.get("labels", "auto") not in LABEL_MODES:
        raise DDError(f"eval.labels '{eval_cfg.labels}' is unknown; choose one of: {', '.join(LABEL_MODES)}")
    check_temperature(eval_cfg.get("temperature", 1.0))


def load_data(cfg: DictConfig):
    """The run's ImageDataset, preprocessed as its dataset config says."""
    d = cfg.dataset
    return load_image_dataset(
        d.name, root=d.root, download=d.download, source=d.source, zca=d.zca, zca_eps=d.zca_eps,
        image_size=d.image_size, train_limit=d.train_limit, stats=d.get("stats"),
        holdout_per_class=d.get("holdout_per_class") or 0,
    )


def accuracy_of(evaluation) -> Metric:
    return Metric("accuracy", evaluation.mean, evaluation.std, list(evaluation.per_model))


class ImageKind:
    name = "image"

    def check(self, cfg: DictConfig) -> None:
        """Refuse bad values before anything is written."""
        if cfg.ipc <= 0:
            raise DDError(f"ipc={cfg.ipc} is not allowed; it must be a positive integer")
        if not (cfg.eval.lr > 0):
            raise DDError(f"eval.lr={cfg.eval.lr} is not allowed; it must be positive")
        if cfg.eval.num_models <= 0 or cfg.eval.epochs <= 0:
            raise DDError(f"eval.num_models={cfg.eval.num_models}, eval.epochs={cfg.eval.epochs}: both must be positive")
        check_protocol(cfg.eval, allowed=("standard",))
        check_labels(cfg.eval)
        precision.check_autocast(cfg.eval.get("autocast"), "eval.autocast")
        precision.check_autocast(cfg.buffer.get("autocast"), "buffer.autocast")

    def load(self, cfg: DictConfig, device):
        return load_data(cfg)

    def resolved(self, cfg: DictConfig) -> dict:
        return OmegaConf.to_container(cfg, resolve=True)

    def model_name(self, cfg: DictConfig) -> str:
        return model_options(cfg.model)[0]

    def context(self, cfg, data, device, out_dir: Path, tracker) -> RunContext:
        return RunContext(cfg=cfg, data=data, device=device, out_dir=out_dir, tracker=tracker, progress=cfg.progress)

    def evaluate(self, ctx: RunContext, syn: SynSet, clock):
        from dd.pipeline import Outcome

        cfg, data = ctx.cfg, ctx.data
        store = LabelStore.from_tensors(syn.extra_tensors, data.num_classes)
        source, label_mode = label_source(cfg.eval, cfg.relabel, store,
                                          lambda: get_teacher(cfg, data, ctx.device, cfg.progress), data.flip)
        evaluation = syn.evaluation
        if evaluation is None or source is not None:  # a method's own evaluation used the set's labels
            lr = None if syn.lr is None else float(syn.lr.reshape(-1)[-1])
            evaluation = evaluate_set(syn.images, syn.labels, data, cfg.model, cfg.eval, lr=lr, seed=cfg.seed,
                                      device=ctx.device, progress=cfg.progress, labels_from=source)
        meta = syn.extra_meta
        details = {
            "ipc": cfg.ipc,
            "eval": {"epochs": evaluation.epochs, "lr": evaluation.lr, "num_models": len(evaluation.per_model),
                     "schedule": cfg.eval.schedule, "optimizer": cfg.eval.optimizer, "labels": label_mode,
                     **({"temperature": cfg.eval.temperature} if source is not None else {})},
            # the stored soft labels' bytes count where the students train on them
            **({"storage": meta["storage"]} if "storage" in meta and label_mode == "stored" else {}),
            **({"teacher": meta["teacher"]} if "teacher" in meta else {}),
            **({"paper_max": meta["paper_max"]} if meta.get("paper_max") else {}),
        }
        return Outcome(accuracy_of(evaluation), details, {**syn.timings, "evaluate_s": evaluation.seconds},
                       selection=meta.get("selection"), result=evaluation,
                       summary={"test_acc_mean": evaluation.mean, "test_acc_std": evaluation.std})

    def export(self, ctx: RunContext, syn: SynSet, outcome, resolved: dict) -> dict:
        """The set (and a method's last state beside its best) as safetensors + meta, and its image grid."""
        if not syn.export or not dist.is_main():  # method=full exports nothing; one writer per job
            return {}
        cfg, data, out_dir = ctx.cfg, ctx.data, ctx.out_dir
        name, options = model_options(cfg.model)
        model = {"name": name, **options}
        export_set(syn, "distilled", ["best", "latest"], outcome.result, ctx, model, resolved)
        if syn.last is not None:
            export_set(syn.last, "distilled_last", ["last"], syn.last.evaluation, ctx, model, resolved)
        save_grid(data.to_pixels(syn.images.detach().cpu()), syn.labels.cpu(), data.class_names, out_dir / "grid.png",
                  title=f"{cfg.method.name} {data.name} ipc={cfg.ipc}: {outcome.result}")
        ctx.tracker.log_image("grid", out_dir / "grid.png")
        return {}


def export_set(syn: SynSet, folder: str, aliases: list[str], evaluation, ctx: RunContext, model: dict,
               resolved: dict) -> None:
    cfg, data = ctx.cfg, ctx.data
    dset = image_set(
        syn.images, syn.labels, data, lr=syn.lr, method=cfg.method.name, ipc=cfg.ipc, model=model, config=resolved,
        evaluation=None if evaluation is None else evaluation.as_dict(), extra_meta=syn.extra_meta,
        extra_tensors=syn.extra_tensors,
    )
    dset.save(ctx.out_dir / folder)
    ctx.tracker.log_artifact(ctx.out_dir / folder, f"{data.name}-{cfg.method.name}-ipc{cfg.ipc}", "dataset",
                             aliases=aliases)


KIND = ImageKind()
