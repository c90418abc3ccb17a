"""The image coresets: class-balanced selection on digits (the rules themselves: test_selection_rules)."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dd.errors import DDError
from dd.image.evaluate import EvalConfig
from dd.image.methods.coreset import CoresetConfig, check_ipc, random_indices, select
from dd.models.factory import ModelConfig

# --- random ------------------------------------------------------------------------


def test_random_class_balanced(digits_data):
    idx = random_indices(digits_data, 7, seed=0)
    assert idx.dtype == torch.int64 and len(idx) == 70
    assert len(set(idx.tolist())) == 70  # no repeats
    counts = np.bincount(digits_data.train_y[idx].numpy(), minlength=10)
    assert counts.tolist() == [7] * 10
    # grouped by class, in class order
    assert digits_data.train_y[idx].tolist() == [c for c in range(10) for _ in range(7)]


def test_random_seeded(digits_data):
    a = random_indices(digits_data, 5, seed=3)
    b = random_indices(digits_data, 5, seed=3)
    c = random_indices(digits_data, 5, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_via_select_and_full_class(digits_data):
    smallest = int(torch.bincount(digits_data.train_y).min())
    kw = dict(seed=0, model_cfg=None, method_cfg=None, eval_cfg=None, device="cpu", progress=False)
    idx = select("random", digits_data, smallest, **kw)
    cls = digits_data.train_y[idx]
    c_min = int(torch.bincount(digits_data.train_y).argmin())
    # the smallest class is taken whole
    assert sorted(idx[cls == c_min].tolist()) == digits_data.indices_of_class(c_min).tolist()
    with pytest.raises(DDError, match=f"ipc={smallest + 1}.*{smallest}"):
        select("random", digits_data, smallest + 1, **kw)


@pytest.mark.parametrize("ipc", [0, -2])
def test_check_ipc_non_positive(digits_data, ipc):
    with pytest.raises(DDError, match=f"ipc={ipc}"):
        check_ipc(digits_data, ipc)


def test_unknown_rule(digits_data):
    with pytest.raises(DDError, match="nope"):
        select("nope", digits_data, 1, seed=0, model_cfg=None, method_cfg=None, eval_cfg=None, device="cpu")


# --- herding / kcenter on digits ----------------------------------------------------------


@pytest.mark.parametrize("rule", ["herding", "kcenter"])
def test_feature_rules_class_balanced(digits_data, rule):
    model_cfg = OmegaConf.structured(ModelConfig(name="convnet", width=8, norm="instance", act="relu", pool="avg"))
    method_cfg = OmegaConf.structured(CoresetConfig(name=rule, feature_epochs=1))
    eval_cfg = OmegaConf.structured(EvalConfig())
    idx = select(rule, digits_data, 2, seed=0, model_cfg=model_cfg, method_cfg=method_cfg, eval_cfg=eval_cfg,
                 device="cpu", progress=False)
    assert digits_data.train_y[idx].tolist() == [c for c in range(10) for _ in range(2)]
    assert len(set(idx.tolist())) == 20
