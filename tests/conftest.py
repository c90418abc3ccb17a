"""Shared fixtures: the embedded digits dataset (loaded once per session), a quiet wandb, the CPU as
the default device, and `fake_cuda` (code run "on CUDA" on a CPU, tests/fake_cuda.py).

Tests use tiny models, for which one intra-op thread is fastest; with two threads torch
spin-waits and a busy 2-core machine runs them many times slower.
"""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
# Tests mean the CPU unless they say otherwise (tests/fake_cuda.py runs code "on CUDA"); on a GPU machine
# `device=auto` would otherwise pick CUDA for every composed config and every CLI subprocess.
os.environ["DD_DEVICE"] = "cpu"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """`cuda` tests need a real GPU: skipped without one, unless DD_REQUIRE_CUDA=1 (make gpu-check), where a
    missing GPU fails them instead."""
    if torch.cuda.is_available() or os.environ.get("DD_REQUIRE_CUDA") == "1":
        return
    skip = pytest.mark.skip(reason="needs a GPU (make gpu-check runs these on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_data():
    from dd.data import load_image_dataset

    return load_image_dataset("digits")


@pytest.fixture(scope="session")
def digits_zca_data():
    from dd.data import load_image_dataset

    return load_image_dataset("digits", zca=True, zca_eps=0.1)


def dies_at_call(fn, n: int):
    """`fn`, except that its n-th call raises KeyboardInterrupt (a kill mid-run, for resume tests)."""
    calls = {"n": 0}

    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return fn(*a, **k)

    return wrapped


@pytest.fixture
def fake_cuda():
    """A CUDA device that lives on the CPU: device mixes raise, host syncs are counted (tests/fake_cuda.py)."""
    from fake_cuda import FakeCuda

    with FakeCuda() as harness:
        yield harness
