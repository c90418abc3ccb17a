"""Host memory that torch frees stays in the process for its next tensors.

glibc hands every block above its mmap threshold (at most 32 MB; one activation map of a width-128
ConvNet on 100 CIFAR images is 52 MB) to a fresh mmap and unmaps it on free. An inner loop that
allocates and frees gigabytes per step then pays a page fault, and the kernel's zeroing, for every
4 KB of every step, again and again; on the 2-core VM this took 40% of an unrolled MTT iteration
(benchmarks/README.md, "Host memory"). Serving large blocks from the heap and never trimming it
(mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1) lets the next step reuse pages already mapped.
The cost: the process keeps its peak resident memory until it exits (`free_in_heap` tells how
much of it is free for reuse, so memory budgets still see it as available).

Every dd-* command calls `keep_freed_memory()` once at start. DD_KEEP_FREED_MEMORY=0 in the
environment turns it off; on a C library without mallopt (macOS, musl) it does nothing.
"""

import ctypes
import ctypes.util
import functools
import os

ENV = "DD_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_MAX = -4
_state = {"on": False}


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; True if it is now (or already was) on."""
    if _state["on"]:
        return True
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    # -1 as the trim threshold reads as the largest size: the heap's free top is never given back
    _state["on"] = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    return _state["on"]


@functools.cache
def _libc_function(name: str):
    """The C library's function `name`, or None where there is none (looked up once: budgets ask often)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def is_on() -> bool:
    return _state["on"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def free_in_heap() -> int:
    """Bytes the process holds free in its heap (glibc's mallinfo2 fordblks): memory a new tensor can
    take without the system, which /proc/meminfo's MemAvailable no longer counts. 0 when unknown."""
    if not _state["on"]:
        return 0
    mallinfo2 = _libc_function("mallinfo2")  # glibc >= 2.33
    if mallinfo2 is None:
        return 0
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
