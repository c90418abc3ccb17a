"""Structured-config schemas: a typo or a wrong type fails when Hydra composes.

Each config group's YAML files extend one schema stored here (``defaults:
[<schema>, _self_]``), so unknown keys and ill-typed values are refused with
Hydra's message naming the key.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ImageDatasetConfig:
    name: str = MISSING
    root: str | None = None
    download: bool = False
    source: str = "torchvision"  # torchvision | idx | folder
    zca: bool = False
    zca_eps: float = 0.1
    image_size: int | None = None
    train_limit: int | None = None


@dataclass
class ModelConfig:
    name: str = "convnet"
    width: int | None = None
    depth: int | None = None
    norm: str | None = None
    act: str | None = None
    pool: str | None = None


@dataclass
class EvalConfig:
    num_models: int = 5
    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.01  # used when the set carries no learned lr
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    test_batch_size: int = 1024


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "ddlab"
    entity: str | None = None
    group: str | None = None  # default: the sweep folder's name in multirun
    tags: list[str] = field(default_factory=list)


@dataclass
class CoresetConfig:
    """random / herding / kcenter: pick real images per class."""

    name: str = MISSING
    # herding and kcenter select on the embedding of a ConvNet trained on the full train set
    feature_epochs: int = 20
    feature_batch_size: int = 256


@dataclass
class FullConfig:
    name: str = "full"


@dataclass
class MTTConfig:
    """Trajectory matching (Cazenavette et al. 2022); names as in the paper's code."""

    name: str = "mtt"
    iterations: int = 5000
    syn_steps: int = 20  # N: student steps on the synthetic set per iteration
    expert_epochs: int = 2  # M: the expert epochs the student must cover
    min_start_epoch: int = 0
    max_start_epoch: int = 20  # T+: start epochs are drawn from [min_start_epoch, max_start_epoch)
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01  # initial value of the learned student lr
    lr_label: float = 2.0  # only with soft_labels
    momentum: float = 0.5  # of the image, lr and label optimisers
    batch_syn: int | None = None  # synthetic images per student step; null = the whole set
    pix_init: str = "real"  # real | noise
    soft_labels: bool = False  # learn label distributions, initialised from an expert's logits
    dsa: bool = True
    eval_every: int = 500
    checkpoint_every: int = 100
    max_nonfinite: int = 10  # consecutive non-finite losses that stop the run
    min_lr: float = 1e-6  # floor of the learned lr: it can never reach zero or go negative


@dataclass
class InnerConfig:
    engine: str = "reverse"  # unroll | reverse | tesla | higher
    optimizer: str = "sgd"  # sgd | momentum | adam (momentum/adam need engine=higher)


@dataclass
class BufferConfig:
    dir: str | None = None  # default: <cache_dir>/buffers/<dataset>_<model>_<hash of what experts depend on>
    cache_dir: str = "${oc.env:DD_CACHE,'~/.cache/ddlab'}"
    num_experts: int = 10
    epochs: int = 50
    lr: float = 0.01
    batch_size: int = 256
    dsa: bool = True
    seed: int = 0
    expert_ids: list[int] | None = None  # shard: train exactly these experts
    start: int = 0  # shard: or experts start..start+count-1
    count: int | None = None


@dataclass
class Config:
    dataset: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ipc: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    inner: InnerConfig = field(default_factory=InnerConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    resume: bool = False  # continue from the run folder's checkpoint (give the folder with hydra.run.dir=...)
    export: bool = True
    progress: bool = True


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="dataset", name="image_schema", node=ImageDatasetConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="eval", name="eval_schema", node=EvalConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(group="method", name="coreset_schema", node=CoresetConfig)
    cs.store(group="method", name="full_schema", node=FullConfig)
    cs.store(group="method", name="mtt_schema", node=MTTConfig)
