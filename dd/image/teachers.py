"""Pretrained teachers for the teacher-based methods (SRe2L, RDED) and for teacher soft labels.

A teacher is trained once per dataset, preprocessing, architecture and recipe, and cached like an
expert buffer:

    <cache_dir>/teachers/<dataset>_<model>_<hash>/
        manifest.json          what it depends on (dataset, preprocessing, model, recipe, seeding),
                               its test accuracy and training time
        teacher.safetensors    its state dict, BatchNorm running statistics included
        partial.pt             while training: the last finished epoch (model + optimiser), for resuming

A run finds its teacher by that identity, trains it if it is missing (resuming a killed training),
or uses `teacher.path`: a dd-teacher folder, whose dataset and preprocessing must equal the run's
(refused otherwise, naming the difference), or a plain state-dict file (.safetensors, or .pt/.pth
read with weights_only) for `teacher.model`, whose provenance ddlab cannot check: its test accuracy on
the run's test split is measured and recorded instead.
"""

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dd import seeds
from dd.data import DSA, ImageDataset
from dd.device import to_device
from dd.errors import DDError
from dd.fsutil import write_file, write_json
from dd.image.experts import describe_mismatch, preprocessing_identity
from dd.image.train import accuracy, lr_schedule, make_optimizer, model_options, new_model
from dd.models import model_has_state
from dd.models.factory import ModelConfig

log = logging.getLogger(__name__)

WEIGHTS = "teacher.safetensors"
MANIFEST = "manifest.json"
PARTIAL = "partial.pt"


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
    schedule: str = "cosine"  # step | cosine (dd.image.train.lr_schedule)
    dsa: bool = True  # DSA on every batch (flip where the dataset allows it)
    seed: int = 0
    cache_dir: str = "${oc.env:DD_CACHE,'~/.cache/ddlab'}"


@dataclass
class Teacher:
    model: torch.nn.Module  # in eval mode, parameters frozen
    manifest: dict  # identity + test_accuracy (+ folder, or the file it came from)

    @property
    def has_batchnorm(self) -> bool:
        return model_has_state(self.model)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The teacher's logits on x (on the teacher's device), in eval mode."""
        device = next(self.model.parameters()).device
        return torch.cat([self.model(to_device(x[i : i + batch_size], device)) for i in range(0, len(x), batch_size)])


def teacher_identity(cfg, data: ImageDataset) -> dict:
    """What a teacher's weights depend on; a cached teacher serves only runs that agree on all of it."""
    t = cfg.teacher
    name, options = model_options(t.model)
    return {
        "dataset": data.name,
        "preprocessing": preprocessing_identity(cfg.dataset, data),
        "model": {"name": name, **options},
        "recipe": {"epochs": int(t.epochs), "lr": float(t.lr), "optimizer": t.optimizer, "momentum": float(t.momentum),
                   "weight_decay": float(t.weight_decay), "batch_size": int(t.batch_size), "schedule": t.schedule,
                   "dsa": bool(t.dsa)},
        # the teacher starts from ("teacher_init", teacher.seed) and trains on ("teacher_data", teacher.seed)
        "seeding": {"scheme": seeds.SCHEME, "seed": int(t.seed)},
    }


def teacher_dir(cfg, identity: dict) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cfg.teacher.cache_dir).expanduser() / "teachers" / f"{identity['dataset']}_{identity['model']['name']}_{digest}"


def check_teacher_config(t) -> None:
    for key in ("epochs", "batch_size"):
        if int(t[key]) <= 0:
            raise DDError(f"teacher.{key}={t[key]} is not allowed; it must be a positive integer")
    if not (float(t.lr) > 0 and math.isfinite(float(t.lr))):
        raise DDError(f"teacher.lr={t.lr} is not allowed; it must be a positive finite number")


def get_teacher(cfg, data: ImageDataset, device, progress: bool = True) -> Teacher:
    """The run's teacher: teacher.path, else the cached one with the run's identity (trained if missing)."""
    if cfg.teacher.path:
        return load_teacher(cfg.teacher.path, data, device, model_cfg=cfg.teacher.model)
    check_teacher_config(cfg.teacher)
    identity = teacher_identity(cfg, data)
    folder = teacher_dir(cfg, identity)
    if not (folder / MANIFEST).is_file():  # written last
        train_teacher(cfg, data, identity, folder, device, progress)
    return load_teacher(folder, data, device)


def load_teacher(path: str | Path, data: ImageDataset, device, model_cfg=None) -> Teacher:
    """A dd-teacher folder (checked against `data`), or a state-dict file for `model_cfg`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DDError(f"teacher.path={path} does not exist; give a dd-teacher folder or a state-dict file")
    if path.is_dir():
        manifest = read_manifest(path)
        wanted = {"dataset": data.name, "preprocessing": manifest_preprocessing(data, manifest)}
        diff = describe_mismatch({k: manifest.get(k) for k in wanted}, wanted)
        if diff:
            raise DDError(f"teacher {path} does not fit this run: {diff.replace('buffer', 'teacher')}; "
                          "train one for this dataset and preprocessing (dd-teacher) or point teacher.path elsewhere")
        model = new_model(manifest["model"], data)
        load_state(model, read_state(path / WEIGHTS), path / WEIGHTS)
        return frozen(Teacher(model, {**manifest, "folder": str(path)}), device)
    if model_cfg is None:
        raise DDError(f"teacher.path={path} is a state-dict file; its architecture must be given as teacher.model")
    model = new_model(dict(model_cfg), data)
    load_state(model, read_state(path), path)
    teacher = frozen(Teacher(model, {"file": str(path), "dataset": data.name, "model": dict(model_cfg),
                                     "provenance": "a given state dict: its dataset and preprocessing are unchecked"}),
                     device)
    teacher.manifest["test_accuracy"] = accuracy(teacher.model, data.test_x, data.test_y)
    log.info("teacher %s: %.2f%% on %s's test split", path, 100 * teacher.manifest["test_accuracy"], data.name)
    return teacher


def manifest_preprocessing(data: ImageDataset, manifest: dict) -> dict:
    """The run's preprocessing in the manifest's keys (a run without a config: from `data` alone)."""
    found = manifest.get("preprocessing") or {}
    mine = {"image_size": list(data.image_size), "mean": [round(float(v), 6) for v in data.mean],
            "std": [round(float(v), 6) for v in data.std], "zca": data.zca is not None}
    return {**found, **mine}


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise DDError(f"{folder} is not a teacher folder (no {MANIFEST}); build one with dd-teacher") from None
    except json.JSONDecodeError:
        raise DDError(f"{folder / MANIFEST} is not valid JSON; the teacher is corrupt, delete it") from None


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a .pt/.pth file loaded with weights_only (a checkpoint dict
    holding it under 'state_dict' or 'model' is unwrapped; DataParallel's 'module.' prefix is dropped)."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with objects, truncated files: one line, no traceback
        raise DDError(f"{path} cannot be read as a state dict with weights_only ({type(e).__name__}); "
                      "give a .safetensors file or a .pt/.pth of tensors") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DDError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state(model: torch.nn.Module, state: dict, source: Path) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes differ
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise DDError(f"{source} does not fit the teacher architecture: {first}; set teacher.model to the "
                      "architecture it was trained as") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys[:3], result.unexpected_keys[:3]
        raise DDError(f"{source} does not fit the teacher architecture: missing {missing}, unexpected {unexpected}; "
                      "set teacher.model to the architecture it was trained as")


def frozen(teacher: Teacher, device) -> Teacher:
    teacher.model = teacher.model.to(device).eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    return teacher


def train_teacher(cfg, data: ImageDataset, identity: dict, folder: Path, device, progress: bool = True) -> None:
    """Train the teacher on the full training split and cache it; resumes from partial.pt after a kill."""
    t = cfg.teacher
    folder.mkdir(parents=True, exist_ok=True)
    seeds.seed_global("teacher_init", t.seed)  # module initialisers draw from the global generator
    model = new_model(t.model, data).to(device)
    opt = make_optimizer(t.optimizer, model.parameters(), float(t.lr), float(t.momentum), float(t.weight_decay))
    schedule = lr_schedule(int(t.epochs), t.schedule)
    gen = seeds.generator("teacher_data", t.seed)
    first, seconds = 0, 0.0
    partial = folder / PARTIAL
    if partial.is_file():
        saved = torch.load(partial, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["generator"])
        first, seconds = int(saved["epoch"]) + 1, float(saved["seconds"])
        log.info("teacher: resuming %s after epoch %d", folder, first - 1)
    dsa = DSA(flip=data.flip) if t.dsa else None
    x_all, y_all = data.train_x, data.train_y
    for epoch in tqdm(range(first, schedule.epochs), desc="teacher", disable=not progress, initial=first,
                      total=schedule.epochs):
        t0 = time.perf_counter()
        model.train()
        for group in opt.param_groups:
            group["lr"] = schedule.lr(float(t.lr), epoch)
        order = torch.randperm(len(x_all), generator=gen)
        diverged = torch.zeros((), dtype=torch.bool, device=device)
        for start in range(0, len(order), int(t.batch_size)):
            idx = order[start : start + int(t.batch_size)]
            x, y = to_device(x_all[idx], device), to_device(y_all[idx], device)
            if dsa is not None:
                x = dsa(x, seed=int(torch.randint(2**31 - 1, (1,), generator=gen)))
            loss = torch.nn.functional.cross_entropy(model(x), y)
            diverged |= ~torch.isfinite(loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if bool(diverged):  # one host wait per epoch
            raise DDError(f"teacher training diverged in epoch {epoch} with teacher.lr={t.lr}; use a smaller lr")
        seconds += time.perf_counter() - t0
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "generator": gen.get_state(),
                 "epoch": epoch, "seconds": seconds}
        write_file(partial, lambda p, s=state: torch.save(s, p))
    model.eval()
    acc = accuracy(model, data.test_x, data.test_y)
    manifest = {"format_version": 1, **identity, "test_accuracy": acc, "train_seconds": seconds}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # each file appears whole; the manifest last, since a folder counts as a teacher once it has one
    write_file(folder / WEIGHTS, lambda p: save_file(state, str(p)))
    write_json(folder / MANIFEST, manifest)
    partial.unlink(missing_ok=True)
    log.info("teacher %s: %.2f%% test accuracy after %d epochs (%.0f s)", folder, 100 * acc, schedule.epochs, seconds)
