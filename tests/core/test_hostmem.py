"""dd.hostmem: with it, memory torch frees stays mapped in the process; without it, glibc unmaps it."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys, torch
import dd.cli  # what every dd-* command imports first
from dd import hostmem

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

before = rss_mb()
x = torch.ones(96 * 2**20 // 4)  # 96 MB: above glibc's largest mmap threshold (32 MB)
del x
print(hostmem.is_on(), rss_mb() - before, hostmem.free_in_heap() / 2**20)
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt and /proc are glibc/Linux")


def run(keep: str | None) -> tuple[bool, float, float]:
    env = {k: v for k, v in os.environ.items() if k != "DD_KEEP_FREED_MEMORY"}
    if keep is not None:
        env["DD_KEEP_FREED_MEMORY"] = keep
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    on, kept_mb, free_mb = out.stdout.split()
    return on == "True", float(kept_mb), float(free_mb)


def test_dd_commands_keep_freed_memory_for_reuse():
    on, kept_mb, free_mb = run(None)
    assert on
    assert kept_mb > 80  # the freed 96 MB block is still resident, ready for the next tensor
    assert free_mb > 90  # and counted as free for reuse (dd.inner.budget adds it to MemAvailable)


def test_the_environment_turns_it_off():
    on, kept_mb, free_mb = run("0")
    assert not on
    assert kept_mb < 16  # glibc unmapped the block on free
    assert free_mb == 0
