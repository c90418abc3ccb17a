"""The text side "on CUDA" on a CPU (tests/fake_cuda.py): attention labels with every inner engine, the
text evaluator, fine-tuning and the text baselines are device-clean, wait for the device a fixed number
of times (not once per inner or training step), and a resume from a checkpoint loaded on the CPU
repeats an uninterrupted run exactly.

Measured on tiny BERT (before the change -> after): one attention-label outer step 12-22 host syncs,
growing by 2-4 per inner step -> 1 (outer loss, finiteness and the previous update's lrs in one copy);
one evaluation run 10 + 3 per training step -> 2 (the divergence check, the predictions).
"""

import pytest
import torch
from conftest import compose, dies_at_call
from omegaconf import OmegaConf

import dd.text.evaluate as ev
import dd.text.methods.attention_labels as al
from dd.config import register_configs
from dd.data.text import TextDatasetConfig, load_text_dataset
from dd.inner import ENGINES
from dd.models.bert import TextClassifier, TextModelConfig, load_backbone
from dd.pipeline import run
from dd.text.methods.baselines import FullFinetuneConfig, finetune

register_configs()

CUDA = ["model=tiny_bert", "dataset.num_train=48", "dataset.num_test=32", "dataset.max_length=8", "eval.num_models=1",
        "progress=false", "logger=none", "device=cuda"]
ATTN = ["experiment=topics_attn", *CUDA, "method.real_batch_size=8", "method.checkpoint_every=100",
        "method.max_steps=3"]
BASELINES = {
    "random": ["method.holdout=16", "method.grid_runs=1", "method.lr_grid=[0.1,1.0]"],
    "herding": ["method.holdout=16", "method.grid_runs=1", "method.lr_grid=[0.1]"],
    "loss_prune": ["method.holdout=16", "method.grid_runs=1", "method.lr_grid=[0.1]", "method.scorer.epochs=1",
                   "method.scorer.batch_size=16"],
    "full": ["method.epochs=1", "method.num_runs=1", "method.batch_size=16"],
}
# host syncs of one attention-label outer step: one copy of (outer loss, finite?, the last update's lrs)
OUTER_STEP_SYNCS = 1
# host syncs of one evaluation run, whatever its number of steps: the divergence check, the predictions
EVAL_RUN_SYNCS = 2


def attn_config(*extra):
    cfg = compose(*ATTN, *extra)
    cfg.method.compare = {}
    return cfg


@pytest.fixture(scope="module")
def tiny():
    """(backbone, data) of a tiny BERT on the synthetic topics (loaded on the CPU, moved by each test)."""
    backbone = load_backbone(OmegaConf.structured(TextModelConfig(name="tiny_bert", hidden_size=16, num_heads=2,
                                                                  num_layers=2, intermediate_size=32)))
    cfg = OmegaConf.structured(TextDatasetConfig(name="synthetic_topics", max_length=8, num_train=48, num_test=24))
    return backbone, load_text_dataset(cfg, backbone.tokenizer)


def syncs_per_outer_step(harness, monkeypatch, tmp_path, *extra) -> list[int]:
    """Run attention labels on CUDA; the host syncs between consecutive outer steps (whole steps: real batch,
    head, meta-gradient, update, logging)."""
    marks = []
    real = al.outer_step

    def marked(clf, syn, batch, theta0, *a, **k):
        assert theta0.is_cuda and syn.inputs_embeds.is_cuda and all(t.is_cuda for t in batch)  # really "on CUDA"
        marks.append(harness.syncs)
        return real(clf, syn, batch, theta0, *a, **k)

    monkeypatch.setattr(al, "outer_step", marked)
    run(attn_config(*extra), tmp_path)
    monkeypatch.setattr(al, "outer_step", real)
    return [b - a for a, b in zip(marks, marks[1:])]


@pytest.mark.parametrize("engine", ENGINES)
def test_attention_label_outer_step_is_device_clean_on_cuda(fake_cuda, monkeypatch, tmp_path, engine):
    """No device mix in a whole run (any mix raises), and an outer step waits for the device once,
    with 1 inner step as with 3."""
    one = syncs_per_outer_step(fake_cuda, monkeypatch, tmp_path / "one", f"inner.engine={engine}",
                               "method.inner_steps=1")
    three = syncs_per_outer_step(fake_cuda, monkeypatch, tmp_path / "three", f"inner.engine={engine}",
                                 "method.inner_steps=3", "method.attention_labels=all", "method.label_type=soft")
    assert one == three == [OUTER_STEP_SYNCS] * 2, fake_cuda.report()


def test_random_starts_and_hard_labels_with_mean_pooling_are_device_clean_on_cuda(fake_cuda, monkeypatch, tmp_path):
    """N(0,1) starts and attention logits drawn by a CPU generator reach the device once; no [CLS] row."""
    per_step = syncs_per_outer_step(fake_cuda, monkeypatch, tmp_path, "method.init=random",
                                    "method.attention_init=random", "method.label_type=hard", "model.pooling=mean")
    assert per_step == [OUTER_STEP_SYNCS] * 2, fake_cuda.report()


def test_balanced_outer_batches_are_drawn_on_the_host_and_cost_no_wait_on_cuda(fake_cuda, monkeypatch, tmp_path):
    """method.outer_batches=balanced: the per-class draw is made on the host; an outer step still waits once."""
    per_step = syncs_per_outer_step(fake_cuda, monkeypatch, tmp_path, "method.outer_batches=balanced")
    assert per_step == [OUTER_STEP_SYNCS] * 2, fake_cuda.report()


def test_non_finite_outer_step_is_skipped_after_one_transfer_on_cuda(fake_cuda, monkeypatch, tmp_path):
    real = al.meta_gradient
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        res = real(*a, **k)
        if calls["n"] == 2:
            res.grads[0] = torch.full_like(res.grads[0], float("nan"))
        return res

    monkeypatch.setattr(al, "meta_gradient", poisoned)
    res = run(attn_config(), tmp_path)
    assert res["method_info"]["nonfinite_skipped"] == 1
    assert [s for s, _ in res["method_info"]["outer_loss_curve"]] == [0, 2]


def tiny_text_set(clf, data, steps: int, device):
    """A distilled set (attention labels on every row) with `steps` learned lrs, on `device`."""
    m = OmegaConf.create({"method": OmegaConf.structured(al.AttentionLabelsConfig(
        inner_steps=steps, attention_labels="all", label_type="soft", init="random", attention_init="random"))}).method
    return al.Distilled(clf, data, m, 2, torch.Generator().manual_seed(0), device).text_set()


def test_text_evaluator_waits_twice_per_run_whatever_its_steps_on_cuda(fake_cuda, tiny):
    """Training steps never wait for the device: a run costs the same syncs with 1 step as with 4, and the
    accuracy is what the CPU computes (the harness keeps CPU values exact)."""
    backbone, data = tiny
    clf = TextClassifier(backbone, data.num_classes)
    cpu = torch.device("cpu")
    want = ev.evaluate_text_set(clf, tiny_text_set(clf, data, 4, cpu), data, 2, seed=0, batch_size=10, progress=False)
    clf.to("cuda")
    try:
        counts = {}
        for steps in (1, 4):
            tset = tiny_text_set(clf, data, steps, torch.device("cuda"))
            assert tset.inputs_embeds.is_cuda and tset.attention_labels.is_cuda
            fake_cuda.reset_counts()
            got = ev.evaluate_text_set(clf, tset, data, 2, seed=0, batch_size=10, progress=False)
            counts[steps] = fake_cuda.syncs
        # one copy of the set's lrs (the check), then per run: the divergence check and the predictions
        assert counts[1] == counts[4] == 1 + 2 * EVAL_RUN_SYNCS, fake_cuda.report()
        assert got.per_model == want.per_model
    finally:
        clf.to("cpu")


def test_fine_tuning_waits_once_per_epoch_not_per_step_on_cuda(fake_cuda, tiny):
    backbone, data = tiny
    clf = TextClassifier(backbone, data.num_classes).to("cuda")
    try:
        counts = {}
        for batch_size in (24, 8):  # 2 and 6 steps per epoch
            m = OmegaConf.structured(FullFinetuneConfig(epochs=2, batch_size=batch_size))
            fake_cuda.reset_counts()
            theta = finetune(clf, data.train, m, 0, 0, torch.device("cuda"), progress=False)
            counts[batch_size] = fake_cuda.syncs
            assert theta.is_cuda and torch.isfinite(theta.cpu()).all()
        assert counts[24] == counts[8] == 2, fake_cuda.report()  # the divergence check of each epoch
    finally:
        clf.to("cpu")


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_text_baseline_is_device_clean_on_cuda(fake_cuda, monkeypatch, tmp_path, method):
    real = ev.predict

    def on_cuda(clf, theta, *a, **k):
        assert theta.is_cuda and clf.body0.is_cuda
        return real(clf, theta, *a, **k)

    monkeypatch.setattr(ev, "predict", on_cuda)
    cfg = compose(*CUDA, "dataset=synthetic_topics", "ipc=1", f"method={method}", *BASELINES[method])
    res = run(cfg, tmp_path)
    assert res["method"] == method and 0 <= res["metric"]["mean"] <= 1
    assert res["device"]["device"] == "cuda:0" and res["precision"]["applies"]


def test_text_runs_record_the_precision_of_their_own_keys(fake_cuda, tmp_path):
    cfg = attn_config("method.max_steps=1", "eval.tf32=true", "eval.autocast=null", "inner.tf32=false")
    res = run(cfg, tmp_path)
    p = res["precision"]
    assert p["applies"] and p["meta_gradient"]["tf32"] is False and p["meta_gradient"]["autocast"] is None
    assert p["evaluation"]["tf32"] is True and p["evaluation"]["autocast"] is None and "experts" not in p
    assert set(res["config"]["eval"]) == {"num_models", "test_batch_size", "tf32", "autocast"}  # the text evaluator's


def test_meta_gradient_runs_without_tf32_and_the_learners_with_eval_tf32_on_cuda(fake_cuda, monkeypatch, tmp_path):
    seen = {"meta": [], "eval": []}
    real_meta, real_train = al.meta_gradient, ev.train_steps

    def meta(*a, **k):
        seen["meta"].append(torch.backends.cuda.matmul.allow_tf32)
        return real_meta(*a, **k)

    def train(*a, **k):
        seen["eval"].append(torch.backends.cuda.matmul.allow_tf32)
        return real_train(*a, **k)

    monkeypatch.setattr(al, "meta_gradient", meta)
    monkeypatch.setattr(ev, "train_steps", train)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # whatever ran before
        run(attn_config("method.max_steps=2"), tmp_path / "default")
        assert seen == {"meta": [False, False], "eval": [True]}
        seen = {"meta": [], "eval": []}
        run(attn_config("method.max_steps=1", "eval.tf32=false"), tmp_path / "off")
        assert seen == {"meta": [False], "eval": [False]}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_text_runs_refuse_precision_keys_they_cannot_honour(tmp_path):
    from dd.cli.common import check_choices
    from dd.errors import DDError

    with pytest.raises(DDError, match="eval.autocast=fp16 is not allowed"):
        run(attn_config("eval.autocast=fp16", "device=cpu"), tmp_path)
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(DDError, match="'channels_last' is not a key of a text run's eval"):  # an image key
        check_choices(["experiment=topics_attn", "eval.channels_last=true"])


def test_attention_label_resume_on_cuda_reaches_the_same_tensors(fake_cuda, monkeypatch, tmp_path):
    """Killed after the checkpoint at step 2 and resumed from it (loaded on the CPU: AdamW's state moves to its
    parameters, its step counters stay on the CPU, the kept best set moves to the device): the same tensors,
    history and selection as an uninterrupted run."""
    extra = ["method.max_steps=4", "method.checkpoint_every=2", "method.select=best_val", "method.val_size=12",
             "method.select_every=1", "method.select_runs=1"]
    run(attn_config(*extra), tmp_path / "whole")
    real = al.meta_gradient
    monkeypatch.setattr(al, "meta_gradient", dies_at_call(real, 4))
    with pytest.raises(KeyboardInterrupt):
        run(attn_config(*extra), tmp_path / "killed")
    monkeypatch.setattr(al, "meta_gradient", real)

    optimizers = []
    real_adamw = torch.optim.AdamW

    class Recorded(real_adamw):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    run(attn_config(*extra, "resume=true"), tmp_path / "killed")
    state = optimizers[0].state
    assert state and all(s["step"].device.type == "cpu" and s["exp_avg"].is_cuda for s in state.values())

    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert a["state"]["next_step"] == b["state"]["next_step"] == 4
    for key in ("history", "select", "best"):
        assert a["state"][key] == b["state"][key], key
    assert a["best_tensors"] is not None
    for group in ("tensors", "best_tensors"):
        for name in a[group]:
            assert torch.equal(a[group][name].cpu(), b[group][name].cpu()), (group, name)
