"""Gradient matching (method=dc) and its Siamese-augmentation variant (method=dsa)."""

import json
import math

import pytest
import torch
from conftest import image_cfg, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dd.config import CONF_DIR, register_configs
from dd.data import DSA
from dd.errors import DDError
from dd.export import load
from dd.image.base import LearnedImages
from dd.image.methods import dc
from dd.pipeline import run

register_configs()

TINY = ["dataset=digits", "ipc=1", "model.width=6", "eval.epochs=5", "eval.num_models=1", "method.iterations=4",
        "method.eval_every=100", "method.checkpoint_every=2", "method.batch_real=16", "progress=false",
        "logger=none"]


def config(*extra):
    return image_cfg(*TINY, *extra)


def method_cfg(**values):
    return OmegaConf.merge(OmegaConf.structured(dc.DCConfig), values)


def test_gradient_distance_equals_the_hand_computed_sum_over_rows():
    d = torch.float64
    # conv weight (out=2, in=1, 1, 2): rows are (in*h*w)-vectors [1, 0], [0, 2] against [1, 1], [0, -3]
    conv_real = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]], dtype=d)
    conv_syn = torch.tensor([[[[1.0, 1.0]]], [[[0.0, -3.0]]]], dtype=d)
    # linear weight (2, 2): an identical row, and orthogonal rows
    lin_real = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=d)
    lin_syn = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=d)
    # a bias: 1-D, contributes nothing however different
    bias_real, bias_syn = torch.tensor([1.0, 2.0], dtype=d), torch.tensor([-5.0, 3.0], dtype=d)
    expected = ((1 - 1 / (1 * math.sqrt(2) + 1e-6)) + (1 - (-6) / (2 * 3 + 1e-6))
                + (1 - 25 / (5 * 5 + 1e-6)) + (1 - 0 / (1 * 1 + 1e-6)))
    got = dc.gradient_distance([conv_real, bias_real, lin_real], [conv_syn, bias_syn, lin_syn])
    assert float(got) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # the identical row is not exactly 0: the 1e-6 in the norm product leaves 1 - 25/(25 + 1e-6) = 4e-8
    row = dc.gradient_distance([lin_real[:1]], [lin_syn[:1]])
    assert float(row) == pytest.approx(1e-6 / (25 + 1e-6), rel=1e-6)
    # the whole conv flattened would give another value: the rows are compared one by one
    flat = 1 - float((conv_real.flatten() @ conv_syn.flatten()) / (conv_real.norm() * conv_syn.norm()))
    assert abs(float(dc.gradient_distance([conv_real], [conv_syn])) - flat) > 0.5
    # a zero row contributes exactly 1 (0 / 1e-6), never NaN
    zero = dc.gradient_distance([torch.zeros(1, 3, dtype=d)], [torch.ones(1, 3, dtype=d)])
    assert float(zero) == 1.0
    # only 1-D tensors: zero
    assert float(dc.gradient_distance([bias_real], [bias_syn])) == 0.0


def test_siamese_dsa_gives_the_real_and_synthetic_batch_of_a_class_the_same_transform(digits_data, monkeypatch):
    net = dc.fresh_model(OmegaConf.create({"name": "convnet", "width": 6}), digits_data, 1, "cpu")
    # Every real image of class c is the class's one synthetic image: under the same transform on
    # both (whole) batches, the real and synthetic gradients are equal.
    syn = [digits_data.train_x[digits_data.indices_of_class(c)[:1]] for c in range(3)]
    real = [x.expand(8, -1, -1, -1).clone() for x in syn]
    calls, compared = [], []

    class Recording(DSA):
        def __call__(self, x, seed):
            calls.append((len(x), seed))
            return super().__call__(x, seed)

    distance = dc.gradient_distance
    monkeypatch.setattr(dc, "gradient_distance", lambda r, s: compared.append((r, s)) or distance(r, s))

    def gradients_agree() -> list[bool]:
        return [all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(*pair)) for pair in compared]

    seeds = [11, 12, 13]
    siamese = dc.Augment.create(OmegaConf.create({"dsa": True, "dsa_strategy": "crop_cutout_scale_rotate"}),
                                flip=False)
    assert siamese.match.batchwise and not siamese.train.batchwise
    dc.matching_loss(net, real, syn, Recording(siamese.match.strategy, flip=False, batchwise=True), seeds)
    assert gradients_agree() == [True, True, True]
    # per class: the real batch then the synthetic batch, with the class's one seed
    assert calls == [(8, 11), (1, 11), (8, 12), (1, 12), (8, 13), (1, 13)]
    # the same images with transforms drawn per image (not batchwise) no longer agree
    compared.clear()
    dc.matching_loss(net, real, syn, siamese.train, seeds)
    assert gradients_agree() == [False, False, False]


def test_loops_follow_the_paper_per_ipc_unless_set():
    m = method_cfg()
    assert [dc.loops(m, ipc) for ipc in (1, 10, 50)] == [(1, 1), (10, 50), (50, 10)]
    assert dc.loops(method_cfg(outer_loop=3), 10) == (3, 50)
    assert dc.loops(method_cfg(outer_loop=4, inner_loop=2), 20) == (4, 2)
    with pytest.raises(DDError, match="ipc=20 has no published"):
        dc.loops(method_cfg(outer_loop=4), 20)


def test_an_iteration_makes_outer_loop_image_steps_and_trains_the_net_only_between_them(digits_data, monkeypatch):
    m = method_cfg(lr_img=0.1, batch_real=4)
    net = dc.fresh_model(OmegaConf.create({"name": "convnet", "width": 6}), digits_data, 2, "cpu")
    images = torch.randn(20, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    syn = LearnedImages.create(images, torch.arange(10).repeat_interleave(2), 2, m.lr_img, m.momentum_img)
    class_images = [digits_data.train_x[digits_data.indices_of_class(c)] for c in range(10)]
    trained, steps = [], []
    real_train, real_step = dc.train_on_set, syn.opt.step
    monkeypatch.setattr(dc, "train_on_set", lambda *a, **k: trained.append(k["schedule"].epochs) or real_train(*a, **k))
    syn.opt.step = lambda: steps.append(1) or real_step()
    before = net.state_dict()["classifier.weight"].clone() if "classifier.weight" in net.state_dict() else None
    dc.iteration(net, syn, class_images, dc.Augment(None, None), m, 3, 2, torch.Generator().manual_seed(1))
    assert len(steps) == 3 and trained == [2, 2]  # no training after the last image step
    assert not torch.equal(syn.images.detach(), images)
    if before is not None:
        assert not torch.equal(net.state_dict()["classifier.weight"], before)


@pytest.mark.parametrize("override, message", [
    ("method.init=zeros", "method.init 'zeros' is unknown"),
    ("method.lr_img=0", "method.lr_img=0"),
    ("method.momentum_img=1.0", "method.momentum_img=1.0"),
    ("method.outer_loop=0", "method.outer_loop=0"),
    ("method.select=max", "method.select 'max' is unknown"),
    ("method.select=best", "method.select=best is now method.select=test"),
    ("method.dsa_strategy=crop_blur", "DSA transform 'blur'"),
    ("ipc=20", "ipc=20 has no published"),
    ("model=convnet_bn", "BatchNorm"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, override, message):
    with pytest.raises(DDError, match=message):
        run(config("method=dc", override), tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_resume_reaches_the_same_images(tmp_path, monkeypatch):
    run(config("method=dsa"), tmp_path / "whole")
    real = dc.iteration
    calls = {"n": 0}

    def dies_at_fourth(*a, **k):  # a kill after the checkpoint at iteration 2
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dc, "iteration", dies_at_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(config("method=dsa"), tmp_path / "killed")
    assert not (tmp_path / "killed" / "results.json").exists()
    monkeypatch.setattr(dc, "iteration", real)
    run(config("method=dsa", "resume=true"), tmp_path / "killed")
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["images"], b["images"])
    assert len([h for h in b["state"]["history"] if "loss" in h]) == 4


def test_select_test_reports_the_best_round_on_fresh_models_and_keeps_the_last(tmp_path):
    results = run(config("method=dc", "method.select=test", "method.eval_every=2"), tmp_path / "run")
    best = load(tmp_path / "run" / "distilled")
    last = load(tmp_path / "run" / "distilled_last")
    assert best.meta["best_iteration"] in (0, 2, 4)  # rounds at 0 and 2, and the final set
    assert last.meta["iteration"] == 4
    assert results["metric"]["per_run"] == best.meta["evaluation"]["per_model"]
    assert results["selection"] == {"split": "test", "rounds": 3, "iteration": best.meta["best_iteration"]}


def cli(*args):
    """dd-distill called in this process (conftest.run_cli: its output and exit status as a user sees them; the
    command runs as a real process in test_cli)."""
    return run_cli("dd-distill", *args, in_process=True)


@pytest.mark.parametrize("method, init", [("dc", "noise"), ("dsa", "real")])
def test_dd_distill_runs_gradient_matching_end_to_end(tmp_path, method, init):
    run_dir = tmp_path / "run"
    out = cli(*TINY, f"method={method}", "method.iterations=3", "method.eval_every=2", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    assert f"{method} digits ipc=1: test accuracy" in out.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == method and results["config"]["method"]["init"] == init
    assert results["config"]["method"]["dsa"] == (method == "dsa")
    assert {"distill_s", "s_per_iteration", "evaluate_s"} <= set(results["timings"])
    ds = load(run_dir / "distilled")
    assert ds.images.shape == (10, 1, 16, 16) and torch.isfinite(ds.images).all()
    assert ds.meta["outer_loop"] == 1 and ds.meta["inner_loop"] == 1  # the paper's loops at IPC 1
    assert sorted(p.name for p in (run_dir / "progress").glob("iter_*.png")) == ["iter_000000.png", "iter_000002.png"]
    assert (run_dir / "curves.png").is_file() and (run_dir / "grid.png").is_file()


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_paper_presets_use_the_per_ipc_loops_and_the_method_defaults(method):
    names = sorted(p.stem for p in CONF_DIR.glob(f"experiment/*_{method}.yaml") if not p.stem.startswith("digits"))
    assert len(names) == 4  # cifar10, cifar100, mnist, fashion_mnist, each at IPC 1, 10, 50
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = {f"{name} ipc={ipc}": compose("config", overrides=[f"experiment={name}", f"ipc={ipc}"])
                   for name in names for ipc in (1, 10, 50)}
    for name, cfg in configs.items():
        m = cfg.method
        assert m.name == method and m.iterations == 1000 and m.lr_img == 0.1 and m.lr_net == 0.01
        assert dc.loops(m, cfg.ipc) == {1: (1, 1), 10: (10, 50), 50: (50, 10)}[cfg.ipc], name
        assert (m.init, m.dsa, cfg.eval.dsa) == (("noise", False, False) if method == "dc" else ("real", True, True))
        assert cfg.eval.epochs == (300 if method == "dc" else 1000) and cfg.eval.schedule == "reference"
