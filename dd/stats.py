"""Summaries of repeated measurements (K evaluation models, runs of a robust condition)."""

import numpy as np


def summary(values) -> dict:
    """mean, population std (numpy's default, as the reference code reports) and the values themselves."""
    values = [float(v) for v in np.atleast_1d(values)]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_model": values}
