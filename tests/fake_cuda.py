"""Run code "on CUDA" on a machine without a GPU, and fail on what CUDA would refuse or wait for.

Inside `FakeCuda()` every tensor keeps its real values on the CPU, but each storage carries the
device it would live on. `device="cuda"` factories, `.to("cuda")`, `.cuda()` and
`torch.load(map_location="cuda")` give storages tagged `cuda:0`, and `.device` reports the tag;
every aten op (forward, backward, inside vmap) then has its tensor arguments checked as CUDA
checks them: one device per op, except CPU 0-dim scalars, CPU indices of a CUDA tensor (a
blocking copy), and copies between devices. Random draws must use a generator of their output's
device, and a generator's state must be a CPU byte tensor, as in torch.

The same pass counts what would make the host wait for the GPU (`FakeCuda.syncs`): `.item()` and
`float()`/`bool()` of a CUDA tensor, copies to the host, blocking copies to the device (and
non-blocking ones from pageable memory), CPU index tensors applied to a CUDA tensor, ops whose
output size depends on CUDA values (nonzero, boolean masks, unique), and torch.cuda.synchronize.

Not modelled: kernels' numerics (TF32, non-deterministic atomics), memory, streams. Tensors
saved inside the harness are saved as CPU tensors.
"""

from __future__ import annotations

import traceback
from collections import Counter
from contextlib import ExitStack
from unittest import mock

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
aten = torch.ops.aten

# ops that may take tensors on two devices
_COPIES = {aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default,
             aten._unsafe_index.Tensor}
# ops whose output size (or Python result) depends on the values: the host waits for the GPU
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
                   aten.unique_consecutive.default, aten.equal.default, aten.is_nonzero.default,
                   aten.repeat_interleave.Tensor, aten.masked_scatter.default}
_SCALAR = {aten._local_scalar_dense.default}
# Tensor methods that move data between devices: handled by the function mode
_MOVES = {"to", "cuda", "cpu"}


class DeviceMismatch(AssertionError):
    """An op mixed CPU and CUDA tensors where CUDA would raise."""


class FakeCudaError(RuntimeError):
    """What torch would raise on CUDA (a generator of the wrong device, say)."""


def _caller() -> str:
    """The innermost frame of ddlab (or a test) that led here: where to look."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\", "/")
        if "/torch/" in path or path.endswith("fake_cuda.py"):
            continue
        return f"{path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}:{frame.lineno} ({frame.name})"
    return "?"


class FakeCuda:
    """Context manager: inside it, code sees one CUDA device (cuda:0) that lives on the CPU."""

    active: FakeCuda | None = None

    def __init__(self, free_bytes: int = 40 * 2**30):
        self.free_bytes = free_bytes
        self._tags: dict[int, StorageWeakRef] = {}  # storages on the fake cuda:0 (weak refs keep cdata unique)
        self._pinned: dict[int, StorageWeakRef] = {}
        self.sync_counts: Counter = Counter()  # kind -> count
        self.sync_sites: Counter = Counter()  # (kind, where) -> count
        self.ops = 0
        self._user_factory = 0  # > 0 while the function mode runs a factory the code called itself
        self._last_device = CPU  # the device of the last op with tensor inputs
        self._stack: ExitStack | None = None

    # --- tags --------------------------------------------------------------------------------------

    @staticmethod
    def _storage_key(t: torch.Tensor):
        while torch._C._functorch.is_functorch_wrapped_tensor(t):
            t = torch._C._functorch.get_unwrapped(t)
        if t.device.type != "cpu" or t.layout != torch.strided:
            return None, None
        storage = t.untyped_storage()
        return storage._cdata, storage

    def device_of(self, t: torch.Tensor) -> torch.device:
        with torch._C.DisableTorchFunction():
            key, _ = self._storage_key(t)
        if key is None:
            return t.device
        ref = self._tags.get(key)
        return CUDA if ref is not None and not ref.expired() else CPU

    def _tag(self, t: torch.Tensor, device: torch.device) -> None:
        key, storage = self._storage_key(t)
        if key is None:
            return
        if device.type == "cuda":
            self._tags[key] = StorageWeakRef(storage)
        else:
            self._tags.pop(key, None)

    def _pin(self, t: torch.Tensor) -> torch.Tensor:
        key, storage = self._storage_key(t)
        self._pinned[key] = StorageWeakRef(storage)
        return t

    def is_pinned(self, t: torch.Tensor) -> bool:
        key, _ = self._storage_key(t)
        ref = self._pinned.get(key)
        return ref is not None and not ref.expired()

    def _prune(self) -> None:
        for table in (self._tags, self._pinned):
            for key in [k for k, ref in table.items() if ref.expired()]:
                del table[key]

    # --- syncs -------------------------------------------------------------------------------------

    def sync(self, kind: str) -> None:
        self.sync_counts[kind] += 1
        self.sync_sites[(kind, _caller())] += 1

    @property
    def syncs(self) -> int:
        """Waits of the host for the GPU. A non-blocking copy from pageable memory is counted apart
        (`h2d_pageable`) and not here: CUDA stages it and returns without a wait, but it is no true async DMA."""
        return sum(n for kind, n in self.sync_counts.items() if kind != "h2d_pageable")

    def reset_counts(self) -> None:
        self.sync_counts.clear()
        self.sync_sites.clear()

    def report(self) -> str:
        return "\n".join(f"{n:5d}  {kind:10s} {where}" for (kind, where), n in self.sync_sites.most_common())

    def _transfer(self, src: torch.device, dst: torch.device, source: torch.Tensor, non_blocking: bool) -> None:
        if src == dst:
            return
        if dst.type == "cpu":
            if not non_blocking:
                self.sync("to_host")
        elif not non_blocking:
            self.sync("h2d")
        elif not self.is_pinned(source):
            self.sync("h2d_pageable")

    # --- entering ----------------------------------------------------------------------------------

    def __enter__(self) -> FakeCuda:
        if FakeCuda.active is not None:
            raise RuntimeError("FakeCuda does not nest")
        FakeCuda.active = self
        harness = self
        real_load = torch.load

        def load(f, map_location=None, **kw):
            target = _device_arg(map_location)
            if target is None or target.type != "cuda":
                return real_load(f, map_location=map_location, **kw)
            obj = real_load(f, map_location="cpu", **kw)
            tree_map(lambda t: harness._tag(t, CUDA) if isinstance(t, torch.Tensor) else None, obj)
            return obj

        def synchronize(*_a, **_k):
            harness.sync("synchronize")

        real_group = torch._C._group_tensors_by_device_and_dtype

        def group(tensorlistlist, with_indices=False):
            """foreach grouping (optimisers, grad clipping) keyed by the tagged device, as on CUDA."""
            out = {}
            for (device, dtype), (lists, indices) in real_group(tensorlistlist, True).items():
                for j, i in enumerate(indices):
                    dev = harness.device_of(lists[0][j]) if device.type == "cpu" else device
                    sub, idx = out.setdefault((dev, dtype), ([[] for _ in lists], []))
                    for k, lst in enumerate(lists):
                        if lst:  # an empty list (amsgrad's when off) stays empty
                            sub[k].append(lst[j])
                    idx.append(i)
            return {key: (sub, idx if with_indices else []) for key, (sub, idx) in out.items()}

        s = self._stack = ExitStack()
        patches = {
            "torch.cuda.is_available": lambda: True, "torch.cuda.device_count": lambda: 1,
            "torch.cuda.current_device": lambda: 0, "torch.cuda.synchronize": synchronize,
            "torch.cuda.mem_get_info": lambda *_a: (harness.free_bytes, 2 * harness.free_bytes),
            "torch.cuda.memory_allocated": lambda *_a: 0, "torch.cuda.memory_reserved": lambda *_a: 0,
            "torch.cuda.max_memory_allocated": lambda *_a: 0, "torch.cuda.reset_peak_memory_stats": lambda *_a: None,
            "torch.cuda.get_device_name": lambda *_a: "fake CUDA (CPU)",
            "torch.cuda.get_device_capability": lambda *_a: (9, 0), "torch.cuda.is_bf16_supported": lambda *_a: True,
            "torch.cuda.manual_seed": lambda *_a: None, "torch.cuda.manual_seed_all": lambda *_a: None,
            "torch.cuda.set_sync_debug_mode": lambda *_a: None, "torch.backends.cudnn.is_available": lambda: True,
            "torch.Generator": FakeGenerator, "torch.load": load,
            # optimisers' step() asks the accelerator's current stream whether a CUDA graph is being captured
            "torch.accelerator.current_stream": lambda *_a: _NO_CAPTURE,
            "torch._C._group_tensors_by_device_and_dtype": group,
        }
        for target, value in patches.items():
            s.enter_context(mock.patch(target, value))
        s.enter_context(_FunctionMode(self))
        s.enter_context(_DispatchMode(self))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._stack.close()
        finally:
            FakeCuda.active = None
            self._tags.clear()
            self._pinned.clear()


class _Stream:
    """The current stream as optimisers query it: never capturing a CUDA graph."""

    @staticmethod
    def is_capturing() -> bool:
        return False


_NO_CAPTURE = _Stream()


def _device_arg(value) -> torch.device | None:
    if value is None or callable(value) or isinstance(value, dict):
        return None
    if isinstance(value, int):
        return torch.device("cuda", value)
    return torch.device(value)


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class FakeGenerator(torch.Generator):
    """torch.Generator inside the harness: a CPU generator that reports, and is checked as, its device."""

    def __new__(cls, device="cpu"):
        dev = torch.device(device)
        obj = super().__new__(cls)  # the real generator is a CPU one whatever the device
        obj._fake_device = CUDA if dev.type == "cuda" else dev
        return obj

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self) -> torch.device:
        return self._fake_device

    def set_state(self, new_state):
        harness = FakeCuda.active
        if harness is not None and harness.device_of(new_state).type != "cpu":
            raise TypeError("RNG state must be a torch.ByteTensor (the state given lives on CUDA)")
        return super().set_state(new_state)


def _generator_device(gen) -> torch.device:
    return getattr(gen, "_fake_device", CPU)


class _Move(torch.autograd.Function):
    """A copy to another device; its backward copies the gradient back (as ToCopyBackward does)."""

    @staticmethod
    def forward(ctx, x, dst, non_blocking):
        harness = FakeCuda.active
        ctx.src = harness.device_of(x)
        harness._transfer(ctx.src, dst, x, non_blocking)
        out = x.clone()
        harness._tag(out, dst)
        return out

    @staticmethod
    def backward(ctx, grad):
        harness = FakeCuda.active
        harness._transfer(harness.device_of(grad), ctx.src, grad, False)
        out = grad.clone()
        harness._tag(out, ctx.src)
        return out, None, None


class _FunctionMode(TorchFunctionMode):
    """Python-level calls: device properties, moves, factories with a device, generators."""

    def __init__(self, harness: FakeCuda):
        super().__init__()
        self.h = harness

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        h = self.h
        name = getattr(func, "__name__", "")
        if name == "__get__":
            prop = getattr(getattr(func, "__self__", None), "__name__", "")
            if prop == "device":
                return h.device_of(args[0])
            if prop == "is_cuda":
                return h.device_of(args[0]).type == "cuda"
            if prop == "is_cpu":
                return h.device_of(args[0]).type == "cpu"
            return func(*args, **kwargs)
        if name in _MOVES and args and isinstance(args[0], torch.Tensor) and _is_tensor_method(func, name):
            return self._move(func, name, args, kwargs)
        if name == "get_device" and _is_tensor_method(func, name):
            return 0 if h.device_of(args[0]).type == "cuda" else -1
        if name == "pin_memory" and _is_tensor_method(func, name):
            return h._pin(args[0].clone())
        if name == "is_pinned" and _is_tensor_method(func, name):
            return h.is_pinned(args[0])
        if name in ("numpy", "tolist") and _is_tensor_method(func, name) and h.device_of(args[0]).type == "cuda":
            if name == "numpy":
                raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first")
            h.sync("to_host")
            return func(*args, **kwargs)
        if name == "__deepcopy__":
            out = func(*args, **kwargs)
            h._tag(out, h.device_of(args[0]))
            return out
        gen = kwargs.get("generator")
        device = kwargs.get("device")
        pin = kwargs.pop("pin_memory", False)
        if _is_cuda(device):
            if gen is not None and _generator_device(gen).type != "cuda":
                raise FakeCudaError(f"{name}: expected a 'cuda' device type for generator but found 'cpu'")
            h._user_factory += 1
            try:
                out = func(*args, **{**kwargs, "device": "cpu"})
            finally:
                h._user_factory -= 1
            for t in _tensors(out):
                h._tag(t, CUDA)
            return out
        tensors = _tensors(kwargs, _tensors(args))
        if gen is not None:  # a draw on an existing tensor's device, or a factory's (CPU unless told)
            target = h.device_of(tensors[0]) if tensors and device is None else torch.device(device or "cpu")
            if _generator_device(gen).type != target.type:
                raise FakeCudaError(f"{name}: expected a '{target.type}' device type for generator but found "
                                    f"'{_generator_device(gen).type}'")
        factory = not tensors
        h._user_factory += factory
        try:
            out = func(*args, **kwargs)
        finally:
            h._user_factory -= factory
        if pin:
            for t in _tensors(out):
                h._pin(t)
        return out

    def _move(self, func, name, args, kwargs):
        h = self.h
        x = args[0]
        non_blocking = bool(kwargs.get("non_blocking", False))
        if name == "cpu":
            dst, rest = CPU, None
        elif name == "cuda":
            dst, rest = CUDA, None
            if len(args) > 2:
                non_blocking = bool(args[2])
        else:
            if args[1:] and isinstance(args[1], torch.Tensor):
                dst = h.device_of(args[1])
                dtype = args[1].dtype
                non_blocking = bool(args[2]) if len(args) > 2 else non_blocking
                copy = bool(args[3]) if len(args) > 3 else bool(kwargs.get("copy", False))
            else:
                device, dtype, nb, _fmt = torch._C._nn._parse_to(*args[1:], **kwargs)
                dst = h.device_of(x) if device is None else (CUDA if device.type == "cuda" else device)
                non_blocking = nb
                copy = bool(kwargs.get("copy", False))
            rest = {"dtype": dtype, "copy": copy}
        src = h.device_of(x)
        if dst.type == "meta" or src.type == "meta":
            return func(*args, **kwargs)
        if rest is not None and (rest["dtype"] is not None and rest["dtype"] != x.dtype or rest["copy"]):
            x = x.to(dtype=rest["dtype"] or x.dtype, copy=rest["copy"])
        if src == dst:
            return x
        return _Move.apply(x, dst, non_blocking)


def _tensors(obj, out: list | None = None) -> list[torch.Tensor]:
    """The tensors in an op's arguments or results (nested tuples, lists and dicts): what tree_flatten would
    find there, at a fraction of its cost (this runs for every op)."""
    if out is None:
        out = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, torch.Tensor):
                out.append(item)
            elif isinstance(item, (list, tuple, dict)):
                _tensors(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _tensors(item, out)
    return out


def _is_tensor_method(func, name: str) -> bool:
    return func is getattr(torch.Tensor, name, None) or getattr(func, "__qualname__", "").startswith(
        ("Tensor.", "TensorBase.", "_TensorBase."))


class _DispatchMode(TorchDispatchMode):
    """Every aten op: CUDA's device rules, the syncs, and the device of each output."""

    def __init__(self, harness: FakeCuda):
        super().__init__()
        self.h = harness

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        h = self.h
        h.ops += 1
        if h.ops % 4096 == 0:
            h._prune()
        devices = [(t, h.device_of(t)) for t in _tensors(kwargs, _tensors(args))]
        out_device = self._check(func, args, kwargs, devices)
        if func in _SCALAR and out_device.type == "cuda":
            h.sync("item")
        elif func in _DATA_DEPENDENT and out_device.type == "cuda":
            h.sync("data_dep")
        out = func(*args, **kwargs)
        if func in _COPIES:
            return out  # the destination keeps its device
        for t in _tensors(out):
            h._tag(t, out_device)
        return out

    def _check(self, func, args, kwargs, devices) -> torch.device:
        h = self.h
        if not devices:
            # A factory the code called is CPU unless it named a device (the function mode then tags the
            # result). One made inside an op or a backward formula (at::zeros(sizes, grad.options()))
            # follows the tensors that op works on: those of the op just before it.
            return CPU if h._user_factory else h._last_device
        if func in _COPIES:
            dst, src = devices[0][1], devices[1][1]
            h._transfer(src, dst, devices[1][0], bool(args[2]) if len(args) > 2 else bool(kwargs.get("non_blocking")))
            return dst
        if func in _INDEXING:
            self_device = devices[0][1]
            if self_device.type == "cuda":
                cpu_index = [t for t, d in devices[1:] if d.type == "cpu" and t.dim() > 0 and
                             t.dtype in (torch.long, torch.int, torch.bool, torch.uint8)]
                if cpu_index:
                    h.sync("cpu_index")
                if any(t.dtype in (torch.bool, torch.uint8) for t, _ in devices[1:]):
                    h.sync("data_dep")
                devices = [(t, d) for t, d in devices if not any(t is c for c in cpu_index)]
        # CPU 0-dim tensors are scalars to a CUDA kernel
        real = {d for t, d in devices if not (d.type == "cpu" and t.dim() == 0)}
        if len(real) > 1:
            shown = ", ".join(f"{tuple(t.shape)}@{d}" for t, d in devices)
            raise DeviceMismatch(f"{func} mixes devices: {shown}; called from {_caller()}")
        out = real.pop() if real else (CUDA if any(d.type == "cuda" for _, d in devices) else CPU)
        h._last_device = out
        return out
