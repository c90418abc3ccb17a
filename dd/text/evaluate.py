"""The text evaluation protocol: K learners trained on a (distilled) set, each scored on the whole test split.

Each run starts from an exact copy of the pretrained body and a freshly drawn head (seeded
per run), takes one plain SGD step per learned lr on fixed class-balanced batches of the
set, with the same loss as in distillation (CE + lambda * attention KL), and is scored on
every test example. Reported: mean and (population) std of accuracy and of macro-F1 over the K
runs, binary F1 where the dataset asks for it (MRPC), the majority-class rate of the scored
split (what a constant predictor gets) and the share of runs that predict a single class.

On a GPU the training steps never wait for the device: the divergence check is one transfer per
run (after its last step), each test batch reaches the device in one non-blocking copy, and the
predictions come back in one copy per run. Training runs in the `eval.tf32` / `eval.autocast`
precision (dd.precision; CUDA only).
"""

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from dd import seeds
from dd.data.text import TextDataset, TextSplit
from dd.device import to_device
from dd.errors import DDError
from dd.precision import phase
from dd.stats import summary
from dd.text.loss import learner_loss

HEADS = ("random", "zero")


@dataclass
class TextEvalConfig:
    """How a text set is scored (a text run's `eval` section): fresh heads trained on it, their test scores."""

    num_models: int = 5  # learners, each from the pretrained body and a fresh head (paper: 100)
    test_batch_size: int = 1024
    # CUDA only (dd.precision): the learners' and fine-tuning's TF32 and bf16 autocast (null | bf16)
    tf32: bool = True
    autocast: str | None = None


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


def batch_slice(step: int, n: int, num_classes: int, batch_per_class: int) -> slice:
    """Inner step `step` uses the next block of batch_per_class examples of every class (a fixed cycle):
    a contiguous block of rows, taken as a slice (no index tensor to copy to the device)."""
    size = num_classes * batch_per_class
    block = step % (n // size)
    return slice(block * size, (block + 1) * size)


def train_steps(clf, theta: torch.Tensor, tset: TextSet) -> torch.Tensor:
    """Plain SGD on the flat vector, one step per learned lr; returns the trained vector.

    Divergence is checked once, after the last step (one transfer, not one wait per step): a non-finite
    loss raises, naming its first step."""
    theta = theta.detach()
    losses = []
    for i in range(tset.steps):
        rows = batch_slice(i, len(tset.targets), tset.num_classes, tset.batch_per_class)
        theta.requires_grad_(True)
        attn = None if tset.attention_labels is None else tset.attention_labels[rows]
        loss = learner_loss(clf, theta, tset.inputs_embeds[rows], tset.attention_mask[rows], tset.token_type_ids[rows],
                            tset.targets[rows], attn, tset.attention_lambda)
        (g,) = torch.autograd.grad(loss, theta)
        theta = (theta - tset.lr[i].to(theta) * g).detach()
        losses.append(loss.detach())
    if losses:
        values = torch.stack(losses).tolist()
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise DDError(f"training on the distilled set diverged (loss {values[bad[0]]}) at step {bad[0]}; "
                          f"lr={tset.lr.tolist()}")
    return theta


def batches(split: TextSplit, batch_size: int, device, order: torch.Tensor | None = None):
    """(input_ids, mask, token types, labels) batches, cut to the longest real length in each batch.

    Each batch is gathered on the host and reaches `device` in one non-blocking copy (dd.device.to_device)."""
    order = torch.arange(len(split)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        mask = split.attention_mask[idx]
        length = max(1, int(mask.sum(1).max()))
        parts = [split.input_ids[idx, :length], mask[:, :length], split.token_type_ids[idx, :length]]
        n = len(idx)
        flat = to_device(torch.cat([*(p.long().reshape(-1) for p in parts), split.labels[idx].long()]), device)
        ids, mask, types, labels = flat.split([n * length] * 3 + [n])
        yield ids.view(n, length), mask.view(n, length), types.view(n, length), labels


@torch.no_grad()
def predict(clf, theta: torch.Tensor, split: TextSplit, batch_size: int = 256) -> torch.Tensor:
    """Predicted classes of every example of `split` (on the CPU: one copy back)."""
    preds = []
    for ids, mask, types, _ in batches(split, batch_size, theta.device):
        logits, _ = clf(theta, clf.embed(ids), mask, types)
        preds.append(logits.argmax(1))
    return torch.cat(preds).cpu()


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
                      desc: str = "evaluate", head: str = "random", tf32: bool = True,
                      autocast: str | None = None) -> TextEvalResult:
    """Train `num_models` learners on `tset` (fresh head, pretrained body each), score each on the test split.

    head: random (the protocol: N(0, 0.02) weights, as the reference) | zero (an all-zero head: the body gets
    no gradient at the first step, whose head update makes a nearest-class-mean classifier of the examples).
    tf32, autocast: the learners' precision on CUDA (eval.tf32, eval.autocast; dd.precision)."""
    if head not in HEADS:
        raise DDError(f"head '{head}' is unknown; choose one of: {', '.join(HEADS)}")
    if num_models <= 0:
        raise DDError(f"eval.num_models={num_models} is not allowed; it must be a positive integer")
    lrs = tset.lr.tolist()  # one copy: the check and its message
    if not all(math.isfinite(v) and v > 0 for v in lrs):
        raise DDError(f"the set's lr {lrs} is not allowed; every lr must be positive and finite")
    split = data.test if split is None else split
    start = time.perf_counter()
    scores = []
    bar = tqdm(range(num_models), desc=desc, disable=not progress)
    for k in bar:
        theta = clf.new_theta(seeds.generator("text_eval_head", seed, round, k))
        if head == "zero":
            theta[clf.numel - clf.head_numel :] = 0
        with phase(tf32, theta.device, autocast):
            theta = train_steps(clf, theta, tset)
            scores.append(score(clf, theta, split, batch_size))
        bar.set_postfix(acc=f"{100 * np.mean([s['accuracy'] for s in scores]):.1f}%")
    return summarise(scores, clf.backbone.name, time.perf_counter() - start, tset.steps, data.f1, split)
