"""Kernel and precision settings of each phase of a run on CUDA (no effect on the CPU).

torch's defaults run cuDNN convolutions in TF32 (a 10-bit mantissa) and matmuls in full float32,
and nothing in them records which. ddlab sets both explicitly per phase:
- the meta-gradient (distillation: inner loops, matching losses), `inner.tf32`, default off: the
  second-order products must be what the exactness tests check;
- evaluation models, `eval.tf32`, and experts, `buffer.tf32`, default on: plain first-order training,
  where TF32 costs nothing measurable and runs convolutions several times faster on Ampere and later.
Evaluation and experts may also train under bf16 autocast (`eval.autocast`, `buffer.autocast`: null or
bf16) and in channels_last layout (`eval.channels_last`, `buffer.channels_last`); the meta-gradient
never does. `cudnn_benchmark` (default on) lets cuDNN time its algorithms once per input shape, which
pays off because every shape in a run repeats thousands of times.

Every setting goes into results.json (`record`) and benchmark JSON.
"""

from contextlib import contextmanager, nullcontext

import torch

from dd.errors import DDError

AUTOCAST = ("bf16",)


def check_autocast(value, key: str) -> None:
    if value is not None and value not in AUTOCAST:
        raise DDError(f"{key}={value} is not allowed; choose null (float32) or one of: {', '.join(AUTOCAST)}")


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = bool(on)


def start_run(cfg) -> None:
    """The settings a run starts with: cuDNN autotuning, and the meta-gradient's TF32 (the phase a
    distillation spends its time in; evaluation and experts switch with `phase`)."""
    torch.backends.cudnn.benchmark = bool(cfg.get("cudnn_benchmark", True))
    inner = cfg.get("inner")
    set_tf32(bool(inner.get("tf32", False)) if inner is not None else False)


@contextmanager
def phase(tf32: bool, device, autocast: str | None = None):
    """TF32 on or off for the block, and bf16 autocast on CUDA if asked; the previous TF32 afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    set_tf32(tf32)
    cast = (torch.autocast("cuda", dtype=torch.bfloat16) if autocast == "bf16" and torch.device(device).type == "cuda"
            else nullcontext())
    try:
        with cast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def of_phase(section) -> dict:
    """A config section's (eval, buffer) precision keys; configs recorded before they existed: the defaults."""
    return {"tf32": bool(section.get("tf32", True)), "autocast": section.get("autocast"),
            "channels_last": bool(section.get("channels_last", False))}


def record(cfg, device) -> dict:
    """The settings of a run, for results.json: what applied on this device."""
    on_cuda = torch.device(device).type == "cuda"
    out = {"applies": on_cuda, "cudnn_benchmark": bool(cfg.get("cudnn_benchmark", True))}
    if cfg.get("inner") is not None:
        out["meta_gradient"] = {"tf32": bool(cfg.inner.get("tf32", False)), "autocast": None, "channels_last": False}
    if cfg.get("eval") is not None:
        out["evaluation"] = of_phase(cfg.eval)
    if cfg.get("buffer") is not None:
        out["experts"] = of_phase(cfg.buffer)
    # grid_sample's backward (DSA) and adaptive pooling have no deterministic CUDA kernels
    out["bit_exact_resume"] = not on_cuda
    return out


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def model_layout(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    return model.to(memory_format=torch.channels_last) if channels_last else model


def no_autocast():
    """A block the meta-gradient runs in: never under an enclosing autocast."""
    return torch.autocast("cuda", enabled=False) if torch.cuda.is_available() else nullcontext()
