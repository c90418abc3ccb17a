"""The text evaluation protocol: K learners trained on a (distilled) set, each scored on the whole test split.

Each run starts from an exact copy of the pretrained body and a freshly drawn head (seeded
per run), takes one plain SGD step per learned lr on fixed class-balanced batches of the
set, with the same loss as in distillation (CE + lambda * attention KL), and is scored on
every test example. Reported: mean and (population) std of accuracy and of macro-F1 over the K
runs, binary F1 where the dataset asks for it (MRPC), the majority-class rate of the scored
split (what a constant predictor gets) and the share of runs that predict a single class.
"""

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from dd import seeds
from dd.data.text import TextDataset, TextSplit
from dd.errors import DDError
from dd.stats import summary
from dd.text.loss import learner_loss

HEADS = ("random", "zero")


@dataclass
class TextSet:
    """What a learner trains on. Example j is of class j % num_classes (classes interleaved)."""

    inputs_embeds: torch.Tensor  # (N, L, hidden)
    attention_mask: torch.Tensor  # (N, L)
    token_type_ids: torch.Tensor  # (N, L)
    targets: torch.Tensor  # (N,) class ids, or (N, classes) target vectors
    lr: torch.Tensor  # (steps,): one SGD step per entry
    num_classes: int
    batch_per_class: int = 1
    attention_labels: torch.Tensor | None = None  # (N, layers, heads, 1 or L, L) probabilities
    attention_lambda: float = 1.0

    @property
    def steps(self) -> int:
        return len(self.lr)


def batch_indices(step: int, n: int, num_classes: int, batch_per_class: int) -> torch.Tensor:
    """Inner step `step` uses the next block of batch_per_class examples of every class (a fixed cycle)."""
    size = num_classes * batch_per_class
    block = step % (n // size)
    return torch.arange(block * size, (block + 1) * size)


def train_steps(clf, theta: torch.Tensor, tset: TextSet) -> torch.Tensor:
    """Plain SGD on the flat vector, one step per learned lr; returns the trained vector."""
    theta = theta.detach()
    for i in range(tset.steps):
        idx = batch_indices(i, len(tset.targets), tset.num_classes, tset.batch_per_class).to(theta.device)
        theta.requires_grad_(True)
        attn = None if tset.attention_labels is None else tset.attention_labels[idx]
        loss = learner_loss(clf, theta, tset.inputs_embeds[idx], tset.attention_mask[idx], tset.token_type_ids[idx],
                            tset.targets[idx], attn, tset.attention_lambda)
        if not torch.isfinite(loss):
            raise DDError(f"training on the distilled set diverged (loss {loss.item()}) at step {i}; lr={tset.lr.tolist()}")
        (g,) = torch.autograd.grad(loss, theta)
        theta = (theta - tset.lr[i].to(theta) * g).detach()
    return theta


def batches(split: TextSplit, batch_size: int, device, order: torch.Tensor | None = None):
    """(input_ids, mask, token types, labels) batches, cut to the longest real length in each batch."""
    order = torch.arange(len(split)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        mask = split.attention_mask[idx]
        length = max(1, int(mask.sum(1).max()))
        yield (split.input_ids[idx, :length].to(device), mask[:, :length].to(device),
               split.token_type_ids[idx, :length].to(device), split.labels[idx].to(device))


@torch.no_grad()
def predict(clf, theta: torch.Tensor, split: TextSplit, batch_size: int = 256) -> torch.Tensor:
    preds = []
    for ids, mask, types, _ in batches(split, batch_size, theta.device):
        logits, _ = clf(theta, clf.embed(ids), mask, types)
        preds.append(logits.argmax(1).cpu())
    return torch.cat(preds)


def binary_f1(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC."""
    tp = int(((preds == 1) & (labels == 1)).sum())
    fp = int(((preds == 1) & (labels != 1)).sum())
    fn = int(((preds != 1) & (labels == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def macro_f1(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of each class's F1 (a class never predicted nor present scores 0)."""
    f1s = []
    for c in range(num_classes):
        tp = int(((preds == c) & (labels == c)).sum())
        fp = int(((preds == c) & (labels != c)).sum())
        fn = int(((preds != c) & (labels == c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def majority_rate(split: TextSplit) -> float:
    """Accuracy of the constant predictor of the split's most frequent class."""
    return float(torch.bincount(split.labels).max()) / max(1, len(split))


def score(clf, theta: torch.Tensor, split: TextSplit, batch_size: int = 256) -> dict:
    preds = predict(clf, theta, split, batch_size)
    return {"accuracy": float((preds == split.labels).float().mean()), "f1": binary_f1(preds, split.labels),
            "macro_f1": macro_f1(preds, split.labels, clf.num_classes),
            "single_class": bool(len(torch.unique(preds)) == 1)}


@dataclass
class TextEvalResult:
    per_model: list[float]  # test accuracy of each run
    mean: float
    std: float
    model: str
    seconds: float
    steps: int | None = None  # SGD steps per run (None: fine-tuning)
    f1: dict | None = None  # {"mean", "std", "per_model"} where the dataset reports F1
    macro_f1: dict | None = None  # {"mean", "std", "per_model"}: unweighted mean of the per-class F1s
    majority_rate: float | None = None  # accuracy of always predicting the scored split's most frequent class
    single_class_fraction: float | None = None  # share of the runs whose predictions are all one class

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        text = f"{100 * self.mean:.2f} ± {100 * self.std:.2f}% (K={len(self.per_model)}, {self.model})"
        if self.f1:
            text += f", F1 {100 * self.f1['mean']:.2f} ± {100 * self.f1['std']:.2f}"
        if self.macro_f1:
            text += f", macro-F1 {100 * self.macro_f1['mean']:.2f} ± {100 * self.macro_f1['std']:.2f}"
        if self.majority_rate is not None:
            text += f"; majority class {100 * self.majority_rate:.2f}%"
        if self.single_class_fraction:
            text += f"; {100 * self.single_class_fraction:.0f}% of runs predict one class only"
        return text


def summarise(scores: list[dict], model: str, seconds: float, steps: int | None, with_f1: bool,
              split: TextSplit | None = None) -> TextEvalResult:
    accs = [s["accuracy"] for s in scores]
    f1 = summary([s["f1"] for s in scores]) if with_f1 else None
    return TextEvalResult(accs, float(np.mean(accs)), float(np.std(accs)), model, seconds, steps, f1,
                          macro_f1=summary([s["macro_f1"] for s in scores]),
                          majority_rate=None if split is None else majority_rate(split),
                          single_class_fraction=float(np.mean([s["single_class"] for s in scores])))


def evaluate_text_set(clf, tset: TextSet, data: TextDataset, num_models: int, *, seed: int = 0, round: int = 0,
                      split: TextSplit | None = None, batch_size: int = 256, progress: bool = True,
                      desc: str = "evaluate", head: str = "random") -> TextEvalResult:
    """Train `num_models` learners on `tset` (fresh head, pretrained body each), score each on the test split.

    head: random (the protocol: N(0, 0.02) weights, as the reference) | zero (an all-zero head: the body gets
    no gradient at the first step, whose head update makes a nearest-class-mean classifier of the examples)."""
    if head not in HEADS:
        raise DDError(f"head '{head}' is unknown; choose one of: {', '.join(HEADS)}")
    if num_models <= 0:
        raise DDError(f"eval.num_models={num_models} is not allowed; it must be a positive integer")
    if not (torch.isfinite(tset.lr).all() and (tset.lr > 0).all()):
        raise DDError(f"the set's lr {tset.lr.tolist()} is not allowed; every lr must be positive and finite")
    split = data.test if split is None else split
    start = time.perf_counter()
    scores = []
    bar = tqdm(range(num_models), desc=desc, disable=not progress)
    for k in bar:
        theta = clf.new_theta(seeds.generator("text_eval_head", seed, round, k))
        if head == "zero":
            theta[clf.numel - clf.head_numel :] = 0
        theta = train_steps(clf, theta, tset)
        scores.append(score(clf, theta, split, batch_size))
        bar.set_postfix(acc=f"{100 * np.mean([s['accuracy'] for s in scores]):.1f}%")
    return summarise(scores, clf.backbone.name, time.perf_counter() - start, tset.steps, data.f1, split)
