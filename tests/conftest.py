"""Shared fixtures: the embedded digits dataset (loaded once per session) and a quiet wandb.

Tests use tiny models, for which one intra-op thread is fastest; with two threads torch
spin-waits and a busy 2-core machine runs them many times slower.
"""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


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
