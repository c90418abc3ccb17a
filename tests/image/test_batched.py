"""Training many models at once reproduces training them one at a time."""

import pytest
import torch
from omegaconf import OmegaConf

from dd.errors import DDError
from dd.image.evaluate import EvalConfig, evaluate_set
from dd.image.experts import BufferConfig, expert_seeds, train_expert, train_experts_batched
from dd.models.factory import ModelConfig

MODEL = OmegaConf.structured(ModelConfig(name="convnet", width=8, norm="instance", act="relu", pool="avg"))


def test_batched_evaluation_matches_sequential(digits_data):
    digits = digits_data
    idx = torch.cat([digits.indices_of_class(c)[:10] for c in range(10)])  # digits IPC 10
    images, labels = digits.train_x[idx], digits.train_y[idx]
    runs = {}
    for batched in (False, True):
        cfg = OmegaConf.structured(EvalConfig(num_models=4, epochs=25, batched=batched))
        runs[batched] = evaluate_set(images, labels, digits, MODEL, cfg, seed=3, progress=False)
    seq, bat = runs[False], runs[True]
    assert seq.mean > 0.3  # it learned something: a meaningful comparison
    # same inits, data orders and augmentations: each model lands within a test image or two of its twin
    for a, b in zip(seq.per_model, bat.per_model):
        assert abs(a - b) <= 2 / len(digits.test_y)
    assert abs(seq.mean - bat.mean) <= max(seq.std, 1 / len(digits.test_y))


def test_batched_chunks_give_the_same_models(digits_data):
    digits = digits_data
    idx = torch.cat([digits.indices_of_class(c)[:2] for c in range(10)])
    whole = OmegaConf.structured(EvalConfig(num_models=3, epochs=5, batched=True))
    chunked = OmegaConf.structured(EvalConfig(num_models=3, epochs=5, batched=True, model_batch=2))
    a = evaluate_set(digits.train_x[idx], digits.train_y[idx], digits, MODEL, whole, progress=False)
    b = evaluate_set(digits.train_x[idx], digits.train_y[idx], digits, MODEL, chunked, progress=False)
    assert a.per_model == pytest.approx(b.per_model, abs=1 / len(digits.test_y))


def test_batchnorm_models_fall_back_to_sequential(digits_data, caplog):
    digits = digits_data
    idx = torch.cat([digits.indices_of_class(c)[:1] for c in range(10)])
    bn = OmegaConf.structured(ModelConfig(name="convnet", width=4, norm="batch"))
    cfg = OmegaConf.structured(EvalConfig(num_models=2, epochs=2, batched=True))
    with caplog.at_level("INFO"):
        r = evaluate_set(digits.train_x[idx], digits.train_y[idx], digits, bn, cfg, progress=False)
    assert len(r.per_model) == 2 and "one at a time" in caplog.text


def test_batched_expert_trajectory_equals_sequential(digits_data):
    digits = digits_data
    recipe = {"lr": 0.01, "batch_size": 256, "dsa": True, "epochs": 2}
    seeds = [expert_seeds(0, e) for e in (11, 12, 13)]
    batched = train_experts_batched(digits, MODEL, recipe, seeds, "cpu", progress=False)
    for seed, (traj, acc) in zip(seeds, batched):
        ref, ref_acc = train_expert(digits, MODEL, recipe, seed, "cpu", progress=False)
        assert traj.shape == ref.shape == (3, ref.shape[1])
        assert torch.equal(traj[0], ref[0])  # same init
        assert torch.allclose(traj, ref, rtol=1e-4, atol=1e-5)
        assert abs(acc - ref_acc) <= 2 / len(digits.test_y)
    assert not torch.allclose(batched[0][0][-1], batched[1][0][-1])  # different seeds, different experts


def test_experts_train_one_at_a_time_on_cpu_unless_told(digits_data):
    from dd.image.experts import experts_at_once

    assert BufferConfig().parallel is None  # auto
    cfg = OmegaConf.create({"model": dict(MODEL), "buffer": {"batch_size": 256}})
    assert experts_at_once(None, 10, cfg, digits_data, "cpu") == 1
    assert experts_at_once(4, 10, cfg, digits_data, "cpu") == 4
    with pytest.raises(DDError, match="buffer.parallel=0"):
        experts_at_once(0, 10, cfg, digits_data, "cpu")
