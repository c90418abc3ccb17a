"""Precision per phase (dd.precision): the meta-gradient never runs in TF32, evaluation and experts do by
default, each phase restores what was before, and results.json says what applied."""

import pytest
import torch
from conftest import image_cfg

from dd import precision
from dd.config import register_configs
from dd.errors import DDError
from dd.pipeline import run

register_configs()

TINY = ["method=mtt", "dataset=digits", "dataset.train_limit=300", "ipc=1", "model.width=4", "eval.epochs=1",
        "eval.num_models=1", "buffer.num_experts=1", "buffer.epochs=2", "method.max_start_epoch=1",
        "method.expert_epochs=1", "method.syn_steps=2", "method.iterations=1", "method.eval_every=0",
        "progress=false", "logger=none"]


def config(tmp_path, *extra):
    return image_cfg(*TINY, f"buffer.dir={tmp_path / 'buffer'}", *extra)


def tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_a_phase_sets_tf32_and_restores_the_previous_setting():
    before = tf32()
    try:
        precision.set_tf32(False)
        with precision.phase(True, "cpu"):
            assert tf32() == (True, True)
            with precision.phase(False, "cpu"):
                assert tf32() == (False, False)
            assert tf32() == (True, True)
        assert tf32() == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_the_meta_gradient_runs_without_tf32_and_evaluation_and_experts_with_it(tmp_path, monkeypatch):
    import dd.image.evaluate as evaluate
    import dd.image.experts as experts
    import dd.image.methods.mtt as mtt

    seen = {"meta": [], "eval": [], "experts": []}

    def spy(name, fn):
        def wrapped(*a, **k):
            seen[name].append(tf32())
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(mtt, "meta_gradient", spy("meta", mtt.meta_gradient))
    monkeypatch.setattr(evaluate, "train_on_set", spy("eval", evaluate.train_on_set))
    monkeypatch.setattr(experts, "train_expert", spy("experts", experts.train_expert))
    before = tf32()
    try:
        results = run(config(tmp_path, "eval.batched=false", "buffer.parallel=1"), tmp_path / "run")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen["meta"] == [(False, False)]
    assert seen["eval"] and set(seen["eval"]) == {(True, True)}
    assert seen["experts"] == [(True, True)]
    rec = results["precision"]
    assert rec["meta_gradient"]["tf32"] is False and rec["evaluation"]["tf32"] is True
    assert rec["experts"] == {"tf32": True, "autocast": None, "channels_last": False}
    assert rec["applies"] is False and rec["bit_exact_resume"] is True  # on the CPU these settings change nothing
    assert results["device"]["device"] == "cpu"


def test_the_settings_can_be_turned_the_other_way(tmp_path, monkeypatch):
    import dd.image.methods.mtt as mtt

    seen = []

    def spy(*a, **k):
        seen.append(tf32())
        return real(*a, **k)

    real = mtt.meta_gradient
    monkeypatch.setattr(mtt, "meta_gradient", spy)
    before = tf32()
    try:
        results = run(config(tmp_path, "inner.tf32=true", "eval.tf32=false", "cudnn_benchmark=false"),
                      tmp_path / "run")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen == [(True, True)]
    assert results["precision"]["evaluation"]["tf32"] is False and results["precision"]["cudnn_benchmark"] is False


@pytest.mark.parametrize("key", ["eval.autocast", "buffer.autocast"])
def test_an_unknown_autocast_dtype_is_refused_before_anything_runs(tmp_path, key):
    with pytest.raises(DDError, match=f"{key}=fp16 is not allowed; choose null .* bf16"):
        run(config(tmp_path, f"{key}=fp16"), tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "buffer").exists()
