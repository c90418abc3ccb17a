"""What text methods receive and return (the image side: dd.registry.RunContext, dd.image.base.SynSet)."""

from dataclasses import dataclass, field

from dd.data.text import TextDataset
from dd.errors import DDError
from dd.registry import RunContext
from dd.text.evaluate import TextEvalResult, TextSet


@dataclass
class TextRunContext(RunContext):
    classifier: object = None  # dd.models.bert.TextClassifier over the run's backbone and classes


@dataclass
class TextSynSet:
    tset: TextSet | None  # the set to export and evaluate; None when nothing small was made (full_finetune)
    evaluation: TextEvalResult | None = None  # set when the method already evaluated this exact set
    label_type: str = "hard"
    labels: object = None  # what to export as `labels`: class ids, soft probabilities or raw vectors
    export: bool = True
    extra_meta: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def require_text(ctx, method: str) -> None:
    """Text methods need a text dataset (and the classifier the text pipeline builds)."""
    if not isinstance(ctx.data, TextDataset) or getattr(ctx, "classifier", None) is None:
        raise DDError(f"method '{method}' needs a text dataset (dataset=synthetic_topics, ag_news, sst2, qnli, mrpc "
                      "or text_files) and a text model (model=minilm, bert_base or tiny_bert)")


def check_ipc(data: TextDataset, ipc: int, pool=None) -> None:
    """ipc real examples per class must exist (in `pool`, a subset of train indices, when given)."""
    if ipc <= 0:
        raise DDError(f"ipc={ipc} is not allowed; it must be a positive integer")
    labels = data.train.labels if pool is None else data.train.labels[pool]
    for c, name in enumerate(data.class_names):
        have = int((labels == c).sum())
        if have < ipc:
            raise DDError(f"ipc={ipc} is more than class '{name}' of {data.name} holds ({have} training examples"
                          f"{' outside the held-out part' if pool is not None else ''}); use ipc <= {have}")
