"""The text methods' contract: their registry, what they receive (TextRunContext) and return (TextSynSet)."""

from dataclasses import dataclass, field

from dd.data.text import TextDataset
from dd.errors import DDError
from dd.registry import Registry, RunContext
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


METHODS = Registry("text", "dd.text.methods", returns=TextSynSet, contract="""Text methods.

Receives: a TextRunContext: the run's config (cfg.method is the method's schema), the tokenised
TextDataset, the device, the run folder, the tracker, and the classifier (the pretrained backbone with a
head drawn fresh for every learner).
Returns: a TextSynSet: the set to export (tset, labels) and, where the method scores it under its own
protocol (an lr picked on held-out data, learned lrs), its evaluation; method=full returns no set
(export=False) and the fine-tuned models' scores.
May write: its own checkpoints in ctx.out_dir; the text kind writes the exported set, the preview,
the baselines of method.compare and results.json.""")
