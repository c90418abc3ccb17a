"""The evaluation protocol: train K fresh models on a set, test each on the full test split.

Per model: SGD (momentum 0.9, weight decay 5e-4) at the given lr, minibatches of
256, DSA on every batch, hard or soft labels, and one lr drop (x0.1) whose
timing is the schedule's (`Schedule`). The reported figure is the last-epoch test
accuracy, mean and (population) std over the K models, as in the
trajectory-matching papers. The teacher-based papers' recipe is the same loop with
other settings: AdamW (eval.optimizer), a cosine schedule, and a `LabelSource` that
gives each batch its augmentation and soft targets (teacher soft labels, stored per
epoch or computed online; dd.image.relabel builds them, this module only calls them).

Model k of evaluation round r starts from the stream ("eval_init", seed, r, k)
and draws its data order and augmentation from ("eval_data", seed, r, k)
(dd.seeds), so no evaluation model shares a start with an expert, and rounds
never replay each other.
"""

import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dd import dist, seeds
from dd.data import DSA, ImageDataset
from dd.device import to_device
from dd.errors import DDError
from dd.image.batched import ModelStack, faster_batched, model_batch_size, step_bytes, train_stack
from dd.models import build_model, model_has_state
from dd.precision import check_autocast, model_layout, of_phase, phase, to_layout
from dd.workers import Stopped, check_workers, run_jobs, worker_count

log = logging.getLogger(__name__)
_global_rng = threading.Lock()  # held while a model is initialised from torch's global generator


@dataclass
class EvalResult:
    per_model: list[float]
    mean: float
    std: float
    epochs: int
    lr: float
    model: str
    seconds: float
    # with evaluate_set(predict=...): model k's class probabilities on predict[k] (not recorded)
    predictions: list[torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), list) else v
                for f in fields(self) if f.name != "predictions"}

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}% (K={len(self.per_model)}, {self.model})"


SCHEDULES = ("step", "reference", "cosine")
OPTIMIZERS = ("sgd", "adamw")
# standard: K models on the set; robust: DD-Ranking's LRS and ARS from eight conditions (dd.image.robust)
PROTOCOLS = ("standard", "robust")


def check_protocol(eval_cfg, allowed: tuple[str, ...] = PROTOCOLS) -> str:
    """eval.protocol, refused unless one of `allowed` (dd-distill runs only the standard protocol)."""
    protocol = eval_cfg.get("protocol", "standard")  # configs recorded before protocol existed: standard
    if protocol not in PROTOCOLS:
        raise DDError(f"eval.protocol '{protocol}' is unknown; choose one of: {', '.join(PROTOCOLS)}")
    if protocol not in allowed:
        raise DDError(f"eval.protocol={protocol} is dd-eval's; distill with eval.protocol=standard, then run "
                      f"dd-eval path=<run>/distilled eval.protocol={protocol}")
    if protocol != "robust" and eval_cfg.get("robust_full_epochs") is not None:
        raise DDError(f"eval.robust_full_epochs={eval_cfg.robust_full_epochs} is read only with eval.protocol=robust")
    return protocol


@dataclass(frozen=True)
class Schedule:
    """When the lr drops: epochs after index `decay_after` train at lr x0.1; or, cosine, it
    follows half a cosine from base to 0 over the epochs (torch's CosineAnnealingLR stepped per epoch)."""

    epochs: int  # epochs trained in all
    decay_after: int
    restart: bool  # a new optimiser at the drop, so momentum starts again from zero
    cosine: bool = False

    def lr(self, base: float, epoch: int) -> float:
        if self.cosine:
            return base * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        return base * 0.1 if epoch > self.decay_after else base

    def restarts_at(self, epoch: int) -> bool:
        return self.restart and epoch == self.decay_after + 1


def lr_schedule(epochs: int, kind: str = "step") -> Schedule:
    """`step`: E epochs, lr x0.1 from epoch E//2, momentum kept (ddlab's default).
    `reference`: what the reference code's evaluate_synset runs for epoch_eval_train=E: E+1 epochs,
    lr x0.1 after the epoch with index E//2+1, and a new SGD optimiser then.
    `cosine`: E epochs, lr annealed from base to 0 (SRe2L's and RDED's students)."""
    if kind == "cosine":
        return Schedule(epochs, epochs, restart=False, cosine=True)
    if kind == "reference":
        return Schedule(epochs + 1, epochs // 2 + 1, restart=True)
    if kind == "step":
        return Schedule(epochs, epochs // 2 - 1, restart=False)
    raise DDError(f"eval.schedule '{kind}' is unknown; choose one of: {', '.join(SCHEDULES)}")


def model_options(model_cfg) -> tuple[str, dict]:
    """Split a model config into its name and the options that are set."""
    cfg = dict(model_cfg)
    name = cfg.pop("name")
    return name, {k: v for k, v in cfg.items() if v is not None}


def new_model(model_cfg, data: ImageDataset) -> torch.nn.Module:
    name, options = model_options(model_cfg)
    return build_model(name, data.channels, data.num_classes, data.image_size, **options)


def set_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard labels (N,) or label distributions (N, classes)."""
    if labels.dim() == 2:
        return torch.sum(-labels * F.log_softmax(logits, dim=1), dim=1).mean()
    return F.cross_entropy(logits, labels)


def distill_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(target || softmax(logits / T)), averaged over the batch: the teacher-based papers' student loss
    (the target is the teacher's softmax at the same T)."""
    return F.kl_div(F.log_softmax(logits / temperature, dim=1), target, reduction="batchmean")


class LabelSource(Protocol):
    """Each training batch's inputs and targets, in place of DSA and the set's labels."""

    name: str  # stored | teacher
    temperature: float

    def batch(self, x: torch.Tensor, idx: torch.Tensor, epoch: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented x, target distributions at `temperature`) for images `idx` of the set at `epoch`."""
        ...

    def prepare(self, epochs: int, n: int, device) -> "LabelSource":
        """The source on `device`, checked to cover `epochs` epochs of an `n`-image set (one per model)."""
        ...


def make_optimizer(kind: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise DDError(f"eval.optimizer '{kind}' is unknown; choose one of: {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """The fraction of (x, y) the model gets right; counted on the model's device, one transfer at the end."""
    device = next(model.parameters()).device
    model.eval()
    y = to_device(y, device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(x), batch_size):
        logits = model(to_device(x[i : i + batch_size], device))
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    return int(correct) / len(x)


def train_on_set(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    schedule: Schedule,
    lr: float,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    dsa: DSA | None = None,
    generator: torch.Generator,
    progress: bool = False,
    desc: str = "train",
    stop: threading.Event | None = None,
    check_every: int = 1,
    channels_last: bool = False,
    optimizer: str = "sgd",
    labels_from: LabelSource | None = None,
) -> None:
    """Train `model` in place; `generator` (CPU) drives data order and augmentation draws.
    `labels_from`: each batch's augmentation and soft targets come from it (KL loss at its temperature;
    DSA and `labels` unused); `optimizer`: sgd (momentum) or adamw.
    `stop` (dd.workers): checked every epoch; once set, training ends with dd.workers.Stopped.
    The loss is checked for NaN/inf on the device and read by the host once every `check_every` epochs (and
    after the last), so no step waits for the GPU; a diverged run raises then."""
    device = next(model.parameters()).device
    images, labels = to_device(images.detach(), device), to_device(labels.detach(), device)

    def new_optimizer(step_lr):
        return make_optimizer(optimizer, model.parameters(), step_lr, momentum, weight_decay)

    opt = new_optimizer(lr)
    n = len(images)
    model.train()
    diverged = torch.zeros((), dtype=torch.bool, device=device)
    for epoch in tqdm(range(schedule.epochs), desc=desc, leave=False, disable=not progress):
        if stop is not None and stop.is_set():
            raise Stopped
        if schedule.restarts_at(epoch):
            opt = new_optimizer(schedule.lr(lr, epoch))
        for group in opt.param_groups:
            group["lr"] = schedule.lr(lr, epoch)
        order = to_device(torch.randperm(n, generator=generator), device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx]
            if labels_from is not None:
                x, target = labels_from.batch(x, idx, epoch, generator)
                loss = distill_loss(model(to_layout(x, channels_last)), target, labels_from.temperature)
            else:
                if dsa is not None:
                    x = dsa(x, seed=int(torch.randint(2**31 - 1, (1,), generator=generator)))
                loss = set_loss(model(to_layout(x, channels_last)), labels[idx])
            diverged |= ~torch.isfinite(loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if ((epoch + 1) % check_every == 0 or epoch == schedule.epochs - 1) and bool(diverged):
            raise DDError(f"training diverged (loss {float(loss.detach())}) by epoch {epoch} with lr={lr}; use a smaller lr")


def evaluate_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    data: ImageDataset,
    model_cfg,
    eval_cfg,
    *,
    lr: float | None = None,
    seed: int = 0,
    round: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "evaluate",
    predict: list[torch.Tensor] | None = None,
    labels_from: "LabelSource | list[LabelSource] | None" = None,
) -> EvalResult:
    """Train eval_cfg.num_models fresh models on (images, labels); test each on data's test split.

    `round` names the evaluation (a method's selection rounds use their iteration + 1, the final
    evaluation 0), so each round's K models are fresh draws that no other round or expert shares.
    `images` and `labels` may also be lists of K sets of one size: model k trains on set k (its own
    random subset, say). `predict`: K input batches; model k's class probabilities on predict[k]
    come back in the result's `predictions` (a teacher's soft labels). `labels_from`: a LabelSource
    (or one per model) that gives every batch its augmentation and soft targets, in place of DSA and
    `labels` (the teacher-based methods' students)."""
    lr = float(eval_cfg.lr if lr is None else lr)
    if not (lr > 0 and np.isfinite(lr)):
        raise DDError(f"evaluation lr={lr} is not allowed; it must be a positive finite number")
    if eval_cfg.num_models <= 0 or eval_cfg.epochs <= 0:
        raise DDError(
            f"eval.num_models={eval_cfg.num_models}, eval.epochs={eval_cfg.epochs}: both must be positive integers"
        )
    # .get: configs recorded before dsa_mode existed mean the default
    mode = eval_cfg.get("dsa_mode", "one")
    dsa = DSA(eval_cfg.dsa_strategy, flip=data.flip, mode=mode) if eval_cfg.dsa and labels_from is None else None
    optimizer = eval_cfg.get("optimizer", "sgd")
    if optimizer not in OPTIMIZERS:
        raise DDError(f"eval.optimizer '{optimizer}' is unknown; choose one of: {', '.join(OPTIMIZERS)}")
    start = time.perf_counter()
    schedule = lr_schedule(eval_cfg.epochs, eval_cfg.get("schedule", "step"))
    model_seeds = [ModelSeeds(seeds.derive("eval_init", seed, round, k), seeds.derive("eval_data", seed, round, k))
                   for k in range(eval_cfg.num_models)]
    sets = per_model_sets(images, labels, len(model_seeds))
    sources = None
    if labels_from is not None:
        given = labels_from if isinstance(labels_from, list) else [labels_from] * len(model_seeds)
        if len(given) != len(model_seeds):
            raise ValueError(f"labels_from needs one source per model ({len(model_seeds)}), got {len(given)}")
        prepared: dict[int, LabelSource] = {}  # a source shared by the models moves to the device once
        for src, s in zip(given, sets):
            if id(src) not in prepared:
                prepared[id(src)] = src.prepare(schedule.epochs, len(s[0]), device)
        sources = [prepared[id(src)] for src in given]
    if predict is not None and len(predict) != len(model_seeds):
        raise ValueError(f"predict needs one input batch per model ({len(model_seeds)}), got {len(predict)}")
    check_workers(eval_cfg.get("workers"))
    precision = of_phase(eval_cfg)
    check_autocast(precision["autocast"], "eval.autocast")
    batched = eval_cfg.get("batched")
    with torch.device("meta"):  # shapes only: no memory, no draw from the global generator
        probe = new_model(model_cfg, data)
    if batched is None:  # auto: on CUDA; on CPU only where a model's step is tiny (dd.image.batched)
        step_images = min(eval_cfg.batch_size, len(sets[0][0]))
        batched = faster_batched(probe, sets[0][0].shape[1:], step_images, device)
    if batched and model_has_state(probe):
        log.info("%s keeps BatchNorm running statistics: training its %d models one at a time",
                 model_options(model_cfg)[0], len(model_seeds))
        batched = False
    if batched and (sources is not None or optimizer != "sgd"):  # the vmapped trainer runs plain SGD on labels
        batched = False
    train = _train_batched if batched else _train_sequential
    # in a job of several processes each rank trains models rank, rank + world, ... (dd.dist); the same models
    mine = dist.strided(list(range(len(model_seeds))))
    accs, predictions = [], (None if predict is None else [])  # a rank left without a model (K < world)
    if mine:
        with phase(precision["tf32"], device, precision["autocast"]):
            if sources is not None:
                train = functools.partial(train, sources=[sources[k] for k in mine])
            accs, predictions = train([sets[k] for k in mine], data, model_cfg, eval_cfg, schedule, lr,
                                      [model_seeds[k] for k in mine], dsa, device, progress and dist.is_main(), desc,
                                      None if predict is None else [predict[k] for k in mine])
    accs, predictions = in_model_order(mine, accs, predictions)
    return EvalResult(
        per_model=accs,
        mean=float(np.mean(accs)),
        std=float(np.std(accs)),
        epochs=schedule.epochs,
        lr=lr,
        model=model_options(model_cfg)[0],
        seconds=time.perf_counter() - start,
        predictions=predictions,
    )


def in_model_order(mine: list[int], accs: list[float], predictions: list | None) -> tuple[list[float], list | None]:
    """Every rank's results (models `mine` each) gathered on every rank, in model order."""
    if dist.world() <= 1:
        return accs, predictions
    accs_all: dict[int, float] = {}
    preds_all: dict[int, torch.Tensor] = {}
    for ks, a, p in dist.gather((mine, accs, None if predictions is None else [t.cpu() for t in predictions])):
        accs_all.update(zip(ks, a))
        if p is not None:
            preds_all.update(zip(ks, p))
    order = sorted(accs_all)
    return [accs_all[k] for k in order], ([preds_all[k] for k in order] if predictions is not None else None)


def per_model_sets(images, labels, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(images, labels)] for each of k models: one shared set, or the K sets given as lists."""
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        return [(images, labels)] * k
    if isinstance(images, torch.Tensor) or isinstance(labels, torch.Tensor) or not len(images) == len(labels) == k:
        raise ValueError(f"give one set for all models or lists of {k} image and label tensors, one per model")
    return list(zip(images, labels))


@torch.no_grad()
def probabilities(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """softmax(model(x)) (temperature 1) in eval mode, on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([F.softmax(model(x[i : i + batch_size].to(device)), dim=1).cpu()
                      for i in range(0, len(x), batch_size)])


@dataclass(frozen=True)
class ModelSeeds:
    init: int  # the model's initial weights
    data: int  # its data order and augmentation draws


def fresh_model(model_cfg, data, init_seed: int, device) -> torch.nn.Module:
    torch.manual_seed(init_seed)  # module initialisers draw from the global generator
    return new_model(model_cfg, data).to(device, non_blocking=True)  # CUDA stages it: no wait


def _train_sequential(sets, data, model_cfg, eval_cfg, schedule, lr, seeds, dsa, device, progress, desc, predict,
                      sources=None):
    """One model after another, or on CPU `eval.workers` of them at once (dd.workers): the same models either way."""
    test_x, test_y = to_device(data.test_x, device), to_device(data.test_y, device)
    moved: dict[int, tuple] = {}  # each distinct set moved once (one shared set: once for all K models)
    sets = [moved.setdefault(id(s), (to_device(s[0].detach(), device), to_device(s[1].detach(), device)))
            for s in sets]
    workers = worker_count(eval_cfg.get("workers"), len(seeds), device)  # checked by evaluate_set
    channels_last = bool(eval_cfg.get("channels_last", False))

    def train_one(k: int, stop: threading.Event):
        with _global_rng:  # module initialisers draw from the global generator: one model at a time
            model = model_layout(fresh_model(model_cfg, data, seeds[k].init, device), channels_last)
        images, labels = sets[k]
        train_on_set(
            model, images, labels,
            schedule=schedule, lr=lr, batch_size=eval_cfg.batch_size,
            momentum=eval_cfg.momentum, weight_decay=eval_cfg.weight_decay,
            dsa=dsa, generator=torch.Generator().manual_seed(seeds[k].data), progress=progress and workers == 1,
            desc=f"model {k}", stop=stop, channels_last=channels_last,
            optimizer=eval_cfg.get("optimizer", "sgd"), labels_from=None if sources is None else sources[k],
        )
        acc = accuracy(model, test_x, test_y, eval_cfg.test_batch_size)
        probs = None if predict is None else probabilities(model, predict[k], eval_cfg.test_batch_size)
        return acc, probs

    finished = []
    bar = tqdm(total=len(seeds), desc=desc if workers == 1 else f"{desc} ({workers} at once)", disable=not progress)

    def done(k: int, result):
        finished.append(result[0])
        bar.update(1)
        bar.set_postfix(acc=f"{100 * np.mean(finished):.1f}%")

    results = run_jobs(train_one, len(seeds), workers, on_done=done)
    bar.close()
    accs = [acc for acc, _ in results]
    return accs, ([p for _, p in results] if predict is not None else None)


def _train_batched(sets, data, model_cfg, eval_cfg, schedule, lr, seeds, dsa, device, progress, desc, predict):
    """The same protocol, every model of a chunk in one vmapped computation (dd.image.batched)."""
    shared = all(s is sets[0] for s in sets)  # one set for all models, or model k's own set k
    if shared:
        images, labels = (to_device(t.detach(), device) for t in sets[0])
    else:  # (K, N, ...): the K sets stacked (they have one size)
        images = to_device(torch.stack([x for x, _ in sets]).detach(), device)
        labels = to_device(torch.stack([y for _, y in sets]).detach(), device)
    test_x, test_y = to_device(data.test_x, device), to_device(data.test_y, device)

    def run_chunk(first, chunk_seeds, schedule=schedule, bar=False):
        stack = ModelStack([fresh_model(model_cfg, data, s.init, device) for s in chunk_seeds])
        chunk = slice(first, first + len(chunk_seeds))
        train_stack(
            stack, images if shared else images[chunk], labels if shared else labels[chunk], per_model=not shared,
            schedule=schedule, lr=lr, batch_size=eval_cfg.batch_size,
            momentum=eval_cfg.momentum, weight_decay=eval_cfg.weight_decay, dsa=dsa,
            generators=[torch.Generator().manual_seed(s.data) for s in chunk_seeds], loss_fn=set_loss,
            progress=bar, desc=f"{desc} x{len(chunk_seeds)}",
        )
        return stack

    def probe(k: int) -> int:  # bytes one training step of k models holds (dd.image.batched.step_bytes)
        stack = ModelStack([fresh_model(model_cfg, data, s.init, device) for s in seeds[:k]])
        x = (images if shared else images[0])[: eval_cfg.batch_size]
        y = (labels if shared else labels[0])[: eval_cfg.batch_size]
        return step_bytes(stack, x, y, set_loss)

    per_chunk = model_batch_size(eval_cfg.get("model_batch"), len(seeds), torch.device(device), probe=probe)
    accs, predictions = [], []
    for i in range(0, len(seeds), per_chunk):
        stack = run_chunk(i, seeds[i : i + per_chunk], bar=progress)
        accs += stack.accuracy(test_x, test_y, eval_cfg.test_batch_size)
        if predict is not None:
            predictions += stack.probabilities(predict[i : i + per_chunk], eval_cfg.test_batch_size)
    return accs, (predictions if predict is not None else None)
