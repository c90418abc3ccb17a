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
    zca: bool = False  # whiten the raw [0, 1] pixels (no mean/std step), as the reference code
    zca_eps: float = 0.1
    # mean/std used without zca: null = the dataset's own, or another dataset's name (e.g. cifar10)
    stats: str | None = None
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
    first_pad: int | None = None  # convnet: the first conv's padding; null = 1 (3 turns 28x28 into 32x32)


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
    # train the K models together (vmap); null = on CUDA only (measured slower than one at a time on CPU);
    # BatchNorm models always fall back to one at a time
    batched: bool | None = None
    model_batch: int | None = None  # models per batched chunk; null = all (CPU) or what free memory allows (CUDA)


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
    engine: str = "auto"  # auto | unroll | reverse | tesla | higher
    # auto: the MB the kept inner-step graphs may take; null = half of the free device (or host) memory
    memory_budget_mb: float | None = None
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
    parallel: int = 1  # experts trained at once in one vmapped computation (same files as one at a time)


@dataclass
class TextDatasetConfig:
    """A text classification task (single sentences or sentence pairs), tokenised by the backbone."""

    name: str = MISSING
    kind: str = "text"  # marks a text dataset: dd.pipeline hands it to dd.text_pipeline
    source: str = "synthetic"  # synthetic | hf | files | fortunes
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
class AttentionLabelsConfig:
    """Attention-label text distillation (Maekawa et al., ACL 2023).

    The defaults are for a laptop CPU (minutes, not GPU-days): examples start as real ones and
    attention labels as the model's own attention, so a few hundred outer steps already learn.
    The paper's settings (N(0,1) starts, 30 epochs, ...) live in conf/experiment/*_attn_ipc1.yaml.
    Which paper setting comes from where: the reference CODE's defaults are N(0,1) inputs_embeds
    (length 512), lr_init 0.01, warmup 0.1, clipping 1.0, 30 epochs, real batch 32, AdamW's default
    weight decay 0.01 on the labels' and the lr's groups, and every distilled lr tied to
    lr_inputs_embeds; unrestricted labels and [CLS] attention labels (lambda 1.0) are the settings
    of the reference README's EXAMPLE command, not code defaults.
    """

    name: str = "attention_labels"
    inner_steps: int = 1  # SGD steps of the learner on the distilled set
    batch_per_class: int = 1  # distilled examples per class in each inner step; must divide ipc
    init: str = "real"  # random: N(0,1) embeddings (the paper) | real: word embeddings of real examples
    # tokens per distilled example; null: dataset.max_length for init=random (as the reference), and for
    # init=real the longest initial example's own length (positions past it were padding: cost, no text)
    length: int | None = None
    label_type: str = "unrestricted"  # hard | soft | unrestricted
    attention_labels: str = "cls"  # none | cls (the [CLS] query row) | all (every query row)
    attention_lambda: float = 1.0
    # attention-label logits start as N(0,1) (random, as the reference code) or as the log of the
    # pretrained model's own attention on the initial examples (model: the KL starts at zero)
    attention_init: str = "model"
    lr_init: float = 0.1  # initial learned inner lr (softplus-parametrised)
    lr_inputs_embeds: float = 0.01  # AdamW lr of the embeddings; the other lrs follow it unless set
    lr_labels: float = "${method.lr_inputs_embeds}"  # type: ignore[assignment]  (as the reference: one knob)
    lr_attention_labels: float = "${method.lr_inputs_embeds}"  # type: ignore[assignment]
    lr_lr: float = "${method.lr_inputs_embeds}"  # type: ignore[assignment]
    weight_decay: float = 0.0  # AdamW weight decay of the inputs_embeds and attention-label groups
    weight_decay_labels: float = 0.0  # ... of the labels' group (reference: AdamW's default 0.01)
    weight_decay_lr: float = 0.0  # ... of the learned lr's group (reference: AdamW's default 0.01)
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    epochs: int = 30  # passes over the real training set (one outer step per real batch)
    max_steps: int | None = 300  # stop after this many outer steps (null: run `epochs` epochs)
    real_batch_size: int = 32
    checkpoint_every: int = 50
    max_nonfinite: int = 10
    # which distilled set is kept: last (the final one) | best_val (lowest loss of a quick evaluation
    # on `val_size` held-out TRAINING examples, never used as real batches) | best_test (lowest loss on
    # the reported test split, as the reference code does: for like-for-like comparisons only; the
    # results say so). Quick evaluations run every `select_every` outer steps (null: once per epoch).
    select: str = "last"
    select_every: int | None = None
    select_runs: int = 3  # learners per quick evaluation
    val_size: int = 200
    # baselines run after distillation under the same backbone, data and protocol, e.g.
    # {random_text: {}, full_finetune: {epochs: 3}}: name -> overrides of its schema defaults
    compare: dict[str, Any] = field(default_factory=dict)


@dataclass
class RandomTextConfig:
    """Real examples per class, trained on like a distilled set; lr picked on a held-out train part."""

    name: str = "random_text"
    inner_steps: int = 1
    batch_per_class: int = 1
    lr_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    holdout: int = 200  # training examples held out to pick the lr (never selected as examples)
    grid_runs: int = 3  # training runs per grid point


@dataclass
class FullFinetuneConfig:
    """Ordinary fine-tuning on the whole train split (AdamW, linear warmup/decay).

    The recipe for a small BERT on a few hundred to a few thousand labelled texts: 5 epochs at lr 1e-4
    (with 3 epochs at 5e-5, a few dozen steps, MiniLM mostly learns the class prior; measured in the README).
    """

    name: str = "full_finetune"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1.0e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    num_runs: int = 3  # fine-tuning runs (fresh heads); mean ± std over them


@dataclass
class LossPruneConfig(RandomTextConfig):
    """Per class, the highest label-NLL examples under a fine-tuned scorer, after skipping likely label noise."""

    name: str = "loss_prune"
    skip_noisy: float = 0.1  # per class, skip this top fraction by NLL (the scorer contradicts them most)
    # the scorer's fine-tuning recipe: full_finetune's, on a short budget (2 epochs)
    scorer: FullFinetuneConfig = field(default_factory=lambda: FullFinetuneConfig(epochs=2, num_runs=1))


@dataclass
class HerdingTextConfig(RandomTextConfig):
    """Per class, herding on the pretrained backbone's [CLS] embeddings."""

    name: str = "herding_text"


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING  # an image ModelConfig or a TextModelConfig, typed by the chosen option
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
    device: str = "auto"
    progress: bool = True


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(name="eval_set_schema", node=EvalSetConfig)
    cs.store(group="dataset", name="image_schema", node=ImageDatasetConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="eval", name="eval_schema", node=EvalConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(group="method", name="coreset_schema", node=CoresetConfig)
    cs.store(group="method", name="full_schema", node=FullConfig)
    cs.store(group="method", name="mtt_schema", node=MTTConfig)
    cs.store(group="dataset", name="text_schema", node=TextDatasetConfig)
    cs.store(group="model", name="text_model_schema", node=TextModelConfig)
    cs.store(group="method", name="attention_labels_schema", node=AttentionLabelsConfig)
    cs.store(group="method", name="random_text_schema", node=RandomTextConfig)
    cs.store(group="method", name="full_finetune_schema", node=FullFinetuneConfig)
    cs.store(group="method", name="loss_prune_schema", node=LossPruneConfig)
    cs.store(group="method", name="herding_text_schema", node=HerdingTextConfig)
