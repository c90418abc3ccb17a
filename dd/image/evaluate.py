"""The evaluation protocol: train K fresh models on a set, test each on the full test split.

Per model (dd.image.train.train_on_set): SGD (momentum 0.9, weight decay 5e-4) at the given lr, minibatches of
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
import threading
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from dd import dist, seeds
from dd.data import DSA, ImageDataset
from dd.device import to_device
from dd.errors import DDError
from dd.image.batched import ModelStack, faster_batched, model_batch_size, step_bytes, train_stack
from dd.image.train import (
    OPTIMIZERS,
    LabelSource,
    ModelSeeds,
    accuracy,
    fresh_model,
    lr_schedule,
    model_options,
    new_model,
    probabilities,
    set_loss,
    train_on_set,
)
from dd.models import model_has_state
from dd.precision import check_autocast, model_layout, of_phase, phase
from dd.workers import check_workers, run_jobs, worker_count

log = logging.getLogger(__name__)
_global_rng = threading.Lock()  # held while a model is initialised from torch's global generator


@dataclass
class EvalConfig:
    """How an image set is scored: fresh models trained on it, their test accuracy (the `eval` group)."""

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
