"""On a real GPU (marked `cuda`: skipped without one; `make gpu-check` runs them and fails without one).

What the fake-CUDA harness cannot show: CUDA's own count of synchronising calls in the hot loops
(torch.cuda.set_sync_debug_mode), a resume on the GPU to a stated tolerance (grid_sample's backward
and adaptive pooling have no deterministic CUDA kernel, so bit-exactness holds on the CPU only), and a
CUDA checkpoint that resumes on the CPU."""

import warnings

import pytest
import torch
from conftest import dies_at_call, image_cfg
from omegaconf import OmegaConf

from dd.config import register_configs
from dd.data import DSA
from dd.image.evaluate import EvalConfig
from dd.models.factory import ModelConfig
from dd.pipeline import run

pytestmark = pytest.mark.cuda
register_configs()

TINY = ["method=mtt", "dataset=digits", "ipc=1", "model.width=6", "eval.epochs=5", "eval.num_models=2",
        "buffer.num_experts=2", "buffer.epochs=2", "buffer.batch_size=64", "method.max_start_epoch=2",
        "method.expert_epochs=1", "method.syn_steps=3", "method.batch_syn=5", "method.iterations=4",
        "method.eval_every=100", "method.checkpoint_every=2", "progress=false", "logger=none"]


def config(tmp_path, *extra):
    return image_cfg(*TINY, f"buffer.dir={tmp_path / 'buffer'}", *extra)


def synchronising_calls(fn) -> int:
    """How many synchronising CUDA calls `fn` makes, as CUDA's sync debug mode reports them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_an_mtt_iteration_synchronises_once_whatever_its_inner_steps(digits_data):
    from dd.image.methods import mtt
    from dd.image.train import new_model
    from dd.models import FlatModel

    def iteration(steps: int):
        m = mtt.MTTConfig(syn_steps=steps, batch_syn=5)
        student = FlatModel(new_model(OmegaConf.structured(ModelConfig(name="convnet", width=8)), digits_data).cuda())
        gen = torch.Generator().manual_seed(0)
        images, labels = mtt.initial_images(digits_data, 1, "real", gen)
        syn = mtt.Synthetic.create(images.cuda(), labels.cuda(), 0.01, m)
        start = student.flatten()
        segment = mtt.Segment(0, 0, start, start + 0.01 * torch.randn_like(start))
        plan = mtt.plan_steps(len(labels), m.batch_syn, m.syn_steps, gen)
        inner = OmegaConf.create({"engine": "auto", "optimizer": "sgd", "memory_budget_mb": None})
        mtt.outer_iteration(syn, student, segment, plan, DSA(flip=False), inner, m.min_lr)  # warm-up
        return lambda: mtt.outer_iteration(syn, student, segment, plan, DSA(flip=False), inner, m.min_lr)

    counts = {steps: synchronising_calls(iteration(steps)) for steps in (2, 8)}
    assert counts[2] == counts[8] <= 2, counts  # the finite check with the loss (and the memory budget's query)


def test_an_evaluation_epoch_synchronises_at_most_once(digits_data):
    from dd.image.evaluate import evaluate_set

    idx = torch.cat([digits_data.indices_of_class(c)[:3] for c in range(10)])
    model = OmegaConf.structured(ModelConfig(name="convnet", width=8))

    def evaluation(epochs: int, batched: bool):
        cfg = OmegaConf.structured(EvalConfig(num_models=2, epochs=epochs, batched=batched, batch_size=8,
                                              model_batch=2))
        return lambda: evaluate_set(digits_data.train_x[idx], digits_data.train_y[idx], digits_data, model, cfg,
                                    device="cuda", progress=False)

    for batched in (False, True):
        short, long = synchronising_calls(evaluation(2, batched)), synchronising_calls(evaluation(6, batched))
        loops = 1 if batched else 2  # the stack, or each of the two models
        assert long - short <= 4 * loops, (batched, short, long)


def test_a_gpu_run_resumes_to_the_images_of_an_uninterrupted_one_within_float_tolerance(tmp_path, monkeypatch):
    import dd.image.methods.mtt as mtt

    run(config(tmp_path, "device=cuda"), tmp_path / "whole")
    real = mtt.meta_gradient
    monkeypatch.setattr(mtt, "meta_gradient", dies_at_call(real, 4))
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path, "device=cuda"), tmp_path / "killed")
    monkeypatch.setattr(mtt, "meta_gradient", real)
    run(config(tmp_path, "device=cuda", "resume=true"), tmp_path / "killed")
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    torch.testing.assert_close(a["images"], b["images"], atol=1e-4, rtol=1e-4)


def test_a_checkpoint_written_on_the_gpu_resumes_on_the_cpu(tmp_path, monkeypatch):
    import dd.image.methods.mtt as mtt

    real = mtt.meta_gradient
    monkeypatch.setattr(mtt, "meta_gradient", dies_at_call(real, 4))
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path, "device=cuda"), tmp_path / "run")
    monkeypatch.setattr(mtt, "meta_gradient", real)
    results = run(config(tmp_path, "device=cpu", "resume=true"), tmp_path / "run")
    assert results["device"]["device"] == "cpu" and 0 <= results["metric"]["mean"] <= 1


def test_precision_settings_apply_on_the_gpu(tmp_path):
    results = run(config(tmp_path, "device=cuda", "eval.autocast=bf16"), tmp_path / "run")
    assert results["precision"]["applies"] is True and results["precision"]["evaluation"]["autocast"] == "bf16"
    assert results["device"]["device"].startswith("cuda") and results["device"]["name"]
