"""Expert trajectories for trajectory matching: training and storage.

An expert is a fresh network trained on the full training set with plain SGD
(constant lr, no momentum, no weight decay, DSA), its flat parameter vector
saved at init and after every epoch. A buffer is a folder:

    manifest.json              what every expert in it shares: dataset, model, preprocessing, recipe
    expert_0007.safetensors    "trajectory": (epochs + 1, num_params) float32
    expert_0007.json           that expert's record: its seeds, test accuracy, seconds

Each expert's two files are written atomically and the record last, so a
killed run loses at most the expert in progress, rerunning skips finished
experts, and shards (``buffer.expert_ids``) can fill one folder concurrently.
"""

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dd import dist, seeds
from dd.data import DSA, ImageDataset
from dd.device import to_device
from dd.errors import DDError
from dd.fsutil import write_file, write_json
from dd.image.batched import ModelStack, model_batch_size, step_bytes, train_stack
from dd.image.train import ModelSeeds, Schedule, accuracy, fresh_model, model_options, set_loss
from dd.models import FlatModel, model_has_state
from dd.precision import check_autocast, model_layout, of_phase, phase, to_layout

log = logging.getLogger(__name__)


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


def preprocessing_identity(dataset_cfg, data: ImageDataset) -> dict:
    """The preprocessing a network trained on `data` depends on (expert buffers, teachers)."""
    return {
        "zca": bool(dataset_cfg.zca),
        "zca_eps": float(dataset_cfg.zca_eps) if dataset_cfg.zca else None,
        "image_size": list(data.image_size),
        "train_limit": dataset_cfg.train_limit,
        "mean": [round(float(v), 6) for v in data.mean],
        "std": [round(float(v), 6) for v in data.std],
        # only when set, so buffers made before the key existed keep their identity (and folder)
        **({"holdout_per_class": holdout} if (holdout := int(dataset_cfg.get("holdout_per_class") or 0)) else {}),
    }


def buffer_identity(cfg, data: ImageDataset) -> dict:
    """What an expert's parameters depend on; a buffer only serves runs that agree on all of it."""
    name, options = model_options(cfg.model)
    b = cfg.buffer
    return {
        "dataset": data.name,
        "model": {"name": name, **options},
        "preprocessing": preprocessing_identity(cfg.dataset, data),
        "recipe": {"lr": float(b.lr), "batch_size": int(b.batch_size), "dsa": bool(b.dsa), "epochs": int(b.epochs),
                   # experts augment as the reference does: one DSA transform per batch
                   "dsa_mode": DSA().mode if b.dsa else None},
        # expert e starts from ("expert_init", buffer.seed, e) and trains on ("expert_data", buffer.seed, e)
        "seeding": {"scheme": seeds.SCHEME, "seed": int(b.seed)},
    }


def expert_seeds(buffer_seed: int, expert_id: int) -> ModelSeeds:
    return ModelSeeds(seeds.derive("expert_init", buffer_seed, expert_id),
                      seeds.derive("expert_data", buffer_seed, expert_id))


def default_buffer_dir(cfg, identity: dict) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    model = identity["model"]["name"]
    zca = "_zca" if identity["preprocessing"]["zca"] else ""
    return Path(cfg.buffer.cache_dir).expanduser() / "buffers" / f"{identity['dataset']}_{model}{zca}_{digest}"


def describe_mismatch(found: dict, wanted: dict, prefix: str = "") -> str | None:
    for key in sorted(set(found) | set(wanted)):
        a, b = found.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff = describe_mismatch(a, b, f"{prefix}{key}.")
            if diff:
                return diff
        elif a != b:
            return f"{prefix}{key} is {a!r} in the buffer but {b!r} in this run"
    return None


@dataclass
class Buffer:
    """A folder of expert trajectories, read lazily: only the epochs asked for are loaded."""

    folder: Path
    manifest: dict

    @classmethod
    def open(cls, folder: str | Path, identity: dict | None = None, create: bool = False) -> "Buffer":
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            if not create:
                raise DDError(f"{folder} is not an expert buffer (no manifest.json); build one with dd-buffer")
            write_json(path, {"format_version": 1, **identity})
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise DDError(f"{path} is not valid JSON; the buffer is corrupt, delete it or point buffer.dir elsewhere") from None
        if identity is not None:
            if "seeding" not in manifest:
                raise DDError(f"buffer {folder} was trained under an older seeding scheme, whose experts start "
                              "where evaluation models start; delete it (or point buffer.dir elsewhere) to rebuild")
            found = {k: manifest.get(k) for k in identity}
            diff = describe_mismatch(found, identity)
            if diff:
                raise DDError(f"buffer {folder} does not match this run: {diff}; use another buffer.dir")
        return cls(folder, manifest)

    def file(self, expert_id: int) -> Path:
        return self.folder / f"expert_{expert_id:04d}.safetensors"

    def record_path(self, expert_id: int) -> Path:
        return self.folder / f"expert_{expert_id:04d}.json"

    def finished(self) -> list[int]:
        done = []
        for rec in sorted(self.folder.glob("expert_*.json")):
            eid = int(rec.stem.split("_")[1])
            if self.file(eid).is_file():
                done.append(eid)
        return done

    def records(self) -> list[dict]:
        return [json.loads(self.record_path(e).read_text()) for e in self.finished()]

    def epochs(self, expert_id: int, *which: int) -> list[torch.Tensor]:
        """Flat parameters of one expert at the given epochs (0 = init)."""
        try:
            with safe_open(str(self.file(expert_id)), framework="pt") as f:
                traj = f.get_slice("trajectory")
                n = traj.get_shape()[0]
                for e in which:
                    if not 0 <= e < n:
                        raise DDError(f"expert {expert_id} has epochs 0..{n - 1}; epoch {e} was asked for")
                return [traj[e] for e in which]
        except DDError:
            raise
        except Exception as e:
            raise DDError(f"expert file {self.file(expert_id)} cannot be read ({e}); delete it and rerun dd-buffer") from None


def train_expert(data: ImageDataset, model_cfg, recipe: dict, seed: ModelSeeds, device, progress: bool = True,
                 desc: str = "expert", precision: dict | None = None) -> tuple[torch.Tensor, float]:
    """Train one expert; return its trajectory (epochs + 1, P) on CPU and its final test accuracy.
    The host reads one number per epoch (the loss, shown and checked for NaN then); each epoch's parameters
    go to pinned host memory without a wait."""
    precision = precision or {}
    channels_last = precision.get("channels_last", False)
    model = model_layout(fresh_model(model_cfg, data, seed.init, device), channels_last)
    if model_has_state(model):
        raise DDError(f"model '{model_cfg.name}' keeps BatchNorm running statistics, which trajectory matching "
                      "cannot replay; use norm=instance (or another stateless norm)")
    flat = FlatModel(model)
    gen = torch.Generator().manual_seed(seed.data)
    dsa = DSA(flip=data.flip) if recipe["dsa"] else None
    opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=0, weight_decay=0)
    x_all, y_all = to_device(data.train_x, device), to_device(data.train_y, device)
    trajectory = HostTrajectories(1, recipe["epochs"] + 1, flat.numel, device)
    trajectory.record(0, [flat.flatten()])
    bar = tqdm(range(recipe["epochs"]), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        model.train()
        order = to_device(torch.randperm(len(x_all), generator=gen), device)
        for start in range(0, len(order), recipe["batch_size"]):
            idx = order[start : start + recipe["batch_size"]]
            x = x_all[idx]
            if dsa is not None:
                x = dsa(x, seed=int(torch.randint(2**31 - 1, (1,), generator=gen)))
            loss = set_loss(model(to_layout(x, channels_last)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        trajectory.record(epoch + 1, [flat.flatten()])
        last = float(loss.detach())  # the epoch's one host read
        if not math.isfinite(last):
            raise DDError(f"expert {desc} diverged at epoch {epoch} (loss {last}); lower buffer.lr")
        bar.set_postfix(loss=f"{last:.3f}")
    acc = accuracy(model, data.test_x, data.test_y)
    return trajectory.result()[0], acc


class HostTrajectories:
    """(K, epochs + 1, P) trajectories in host memory, filled from the device without waiting: pinned memory and
    non-blocking copies on CUDA (read them with `result`, which waits once for the copies)."""

    def __init__(self, k: int, epochs: int, numel: int, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.host = torch.empty((k, epochs, numel), pin_memory=self.cuda)

    def record(self, epoch: int, flats: list[torch.Tensor]) -> None:
        for k, flat in enumerate(flats):
            self.host[k, epoch].copy_(flat.detach(), non_blocking=self.cuda)

    def result(self) -> list[torch.Tensor]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return list(self.host.unbind(0))


def train_experts_batched(data: ImageDataset, model_cfg, recipe: dict, model_seeds: list[ModelSeeds], device,
                          progress: bool = True, precision: dict | None = None) -> list[tuple[torch.Tensor, float]]:
    """Train len(model_seeds) experts at once (dd.image.batched); each follows train_expert's trajectory."""
    models = [fresh_model(model_cfg, data, s.init, device) for s in model_seeds]
    if model_has_state(models[0]):
        raise DDError(f"model '{model_cfg.name}' keeps BatchNorm running statistics, which trajectory matching "
                      "cannot replay; use norm=instance (or another stateless norm)")
    stack = ModelStack(models)
    trajectories = HostTrajectories(len(models), recipe["epochs"] + 1, FlatModel(models[0]).numel, device)
    trajectories.record(0, [stack.flat(k) for k in range(stack.k)])
    train_stack(
        stack, to_device(data.train_x, device), to_device(data.train_y, device),
        schedule=Schedule(recipe["epochs"], recipe["epochs"], restart=False),  # constant lr
        lr=recipe["lr"], batch_size=recipe["batch_size"], momentum=0.0, weight_decay=0.0,
        dsa=DSA(flip=data.flip) if recipe["dsa"] else None,
        generators=[torch.Generator().manual_seed(s.data) for s in model_seeds], loss_fn=set_loss,
        on_epoch=lambda epoch, st: trajectories.record(epoch + 1, [st.flat(k) for k in range(st.k)]),
        progress=progress, desc=f"{len(model_seeds)} experts",
    )
    accs = stack.accuracy(data.test_x, data.test_y)
    return list(zip(trajectories.result(), accs))


def experts_at_once(setting: int | None, todo: int, cfg, data: ImageDataset, device) -> int:
    """buffer.parallel: the number given; null: 1 on the CPU (dd.workers' cores serve evaluation better), on
    CUDA as many as 70% of free memory holds (a single small ConvNet leaves a GPU idle)."""
    if setting is not None:
        if setting <= 0:
            raise DDError(f"buffer.parallel={setting} is not allowed; give a positive number of experts, or null")
        return setting
    device = torch.device(device)
    if device.type != "cuda" or todo <= 1:
        return 1
    batch = cfg.buffer.batch_size

    def probe(k: int) -> int:
        stack = ModelStack([fresh_model(cfg.model, data, expert_seeds(0, i).init, device) for i in range(k)])
        return step_bytes(stack, to_device(data.train_x[:batch], device), to_device(data.train_y[:batch], device),
                          set_loss)

    return model_batch_size(None, todo, device, probe=probe)


def expert_ids(buffer_cfg) -> list[int]:
    if buffer_cfg.expert_ids is not None:
        ids = [int(i) for i in buffer_cfg.expert_ids]
    else:
        count = buffer_cfg.num_experts - buffer_cfg.start if buffer_cfg.count is None else buffer_cfg.count
        ids = list(range(buffer_cfg.start, buffer_cfg.start + count))
    if not ids or min(ids) < 0:
        raise DDError(f"expert ids {ids} are not allowed; give non-negative ids (buffer.expert_ids or buffer.start/count)")
    return ids


def build_buffer(cfg, data: ImageDataset, device, ids: list[int] | None = None, progress: bool = True) -> Buffer:
    """Train every expert in `ids` that the buffer does not hold yet. In a job of several processes (dd.dist)
    the ranks deal the missing experts out round-robin, each writes its own, and all return once every
    expert is in the folder."""
    b = cfg.buffer
    if b.epochs <= 0 or b.lr <= 0 or b.batch_size <= 0:
        raise DDError(f"buffer.epochs={b.epochs}, buffer.lr={b.lr}, buffer.batch_size={b.batch_size}: all must be positive")
    identity = buffer_identity(cfg, data)
    folder = Path(b.dir) if b.dir else default_buffer_dir(cfg, identity)
    buffer = Buffer.open(folder, identity, create=True)
    ids = expert_ids(b) if ids is None else ids
    # rank 0's view of what is missing, so that every rank deals out the same list
    todo = dist.broadcast([i for i in ids if i not in set(buffer.finished())])
    if len(todo) < len(ids) and dist.is_main():
        log.info("buffer %s: %d of %d experts already done, skipping them", folder, len(ids) - len(todo), len(ids))
    everyone = todo
    todo = dist.strided(todo)
    parallel = experts_at_once(b.get("parallel"), len(todo), cfg, data, device)
    precision = of_phase(b)
    check_autocast(precision["autocast"], "buffer.autocast")
    bar = tqdm(total=len(todo), desc=f"experts -> {folder.name}", disable=not progress)
    for i in range(0, len(todo), parallel):
        chunk = todo[i : i + parallel]
        t0 = time.perf_counter()
        chunk_seeds = [expert_seeds(int(b.seed), eid) for eid in chunk]
        with phase(precision["tf32"], device, precision["autocast"]):
            if len(chunk) > 1:
                trained = train_experts_batched(data, cfg.model, identity["recipe"], chunk_seeds, device, progress,
                                                precision)
            else:
                trained = [train_expert(data, cfg.model, identity["recipe"], chunk_seeds[0], device, progress,
                                        desc=f"expert {chunk[0]}", precision=precision)]
        seconds = (time.perf_counter() - t0) / len(chunk)
        for eid, seed, (traj, acc) in zip(chunk, chunk_seeds, trained):
            write_file(buffer.file(eid), lambda p, t=traj: save_file({"trajectory": t.contiguous()}, str(p)))
            write_json(buffer.record_path(eid), {"id": eid, "init_seed": seed.init, "data_seed": seed.data,
                                                 "test_accuracy": acc, "seconds": seconds,
                                                 "num_params": traj.shape[1], "trained_with": len(chunk), "rank": dist.rank(),
                                                 "trained_on": str(device), "precision": precision})
            log.info("expert %d: test accuracy %.2f%% (%.0fs)", eid, 100 * acc, seconds)
        bar.update(len(chunk))
    bar.close()
    if dist.world() > 1:
        wait_for_experts(buffer, everyone)
    return buffer


def wait_for_experts(buffer: Buffer, ids: list[int], poll_s: float = 2.0) -> None:
    """Wait until every expert in `ids` is in the folder (the other ranks write theirs). The files, not a
    collective, are watched: ranks may finish far apart, longer than a collective may wait; but when no
    expert has arrived for the job's collective timeout (DD_DIST_TIMEOUT_S), a rank is taken for dead."""
    missing = set(ids) - set(buffer.finished())
    patience = dist.timeout().total_seconds()
    last = time.monotonic()
    while missing:
        time.sleep(poll_s)
        now_missing = missing - set(buffer.finished())
        if now_missing != missing:
            missing, last = now_missing, time.monotonic()
        elif time.monotonic() - last > patience:
            raise DDError(f"experts {sorted(missing)} of {buffer.folder} never arrived from the other ranks "
                          f"({patience:.0f} s without progress; DD_DIST_TIMEOUT_S sets it): did a rank die?")
