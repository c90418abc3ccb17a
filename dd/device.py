"""The compute device: choosing it from the `device` config key, and moving data onto it without a wait.

Every tensor a run creates takes its device from its inputs or from `resolve_device`. Data that
starts on the host (a data order drawn by a CPU generator, augmentation parameters, an expert's
epochs read from disk) reaches a GPU through `to_device`: staged in pinned memory and copied
asynchronously, so the host queues the copy and goes on instead of waiting for the GPU to drain.
"""

import os

import torch

from dd import dist
from dd.errors import DDError

DEVICE_ENV = "DD_DEVICE"  # the default of the `device` key (the tests pin it to cpu)


def available() -> str:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "cpu" + "".join(f", cuda:{i}" for i in range(count))


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when there is one), `cpu`, `cuda` or `cuda:N`; an unusable one is refused in one line.
    In a job of several processes (dd.dist) `auto` and `cuda` mean this rank's GPU, cuda:LOCAL_RANK."""
    name = str(name).strip()
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    _, world, local = dist.launched()
    if name == "cuda" and world > 1 and torch.cuda.is_available():
        return torch.device("cuda", local % torch.cuda.device_count())
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise DDError(f"device={name} is not a device name; choose one of: auto, cpu, cuda, cuda:N") from None
        if not torch.cuda.is_available():
            raise DDError(f"device={name} was asked for but CUDA is not available; available: {available()}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DDError(f"device={name} was asked for but this machine has {torch.cuda.device_count()} GPU(s); "
                          f"available: {available()}")
        return device
    raise DDError(f"device '{name}' is unknown; choose one of: auto, cpu, cuda, cuda:N")


def default_device() -> str:
    return os.environ.get(DEVICE_ENV, "auto")


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """`t` on `device`. A host tensor bound for CUDA goes through pinned memory with a non-blocking copy
    (the caching host allocator keeps the pinned block until the copy is done, so this is safe)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def describe(device: torch.device) -> dict:
    """What results.json records about the device a run used."""
    device = torch.device(device)
    record = {"device": str(device)}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        record.update(device=f"cuda:{index}", name=torch.cuda.get_device_name(index),
                      cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        record["threads"] = torch.get_num_threads()
    record["torch"] = torch.__version__
    if dist.world() > 1:
        record["world_size"] = dist.world()
    return record
