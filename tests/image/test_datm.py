"""DATM: the start-epoch window, the initial images and soft labels, the skip rule, bad values, the CLI.

The window and the labels are checked against values worked out by hand; the labels on a hand-built
buffer of three linear "experts" whose last-epoch predictions are chosen in the test.
"""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import dies_at_call, image_cfg, run_cli
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from dd.config import register_configs
from dd.errors import DDError
from dd.export import load
from dd.image.experts import Buffer
from dd.image.methods import datm
from dd.image.methods.datm import DATMConfig, start_epoch_bound
from dd.image.methods.mtt import Segment, Synthetic, outer_iteration, plan_steps
from dd.inner.engines import InnerConfig
from dd.models import FlatModel
from dd.pipeline import run
from dd.registry import RunContext

register_configs()


# --- the start-epoch window -------------------------------------------------------------------------

@pytest.mark.parametrize("initial,final,window,it,bound", [
    # CIFAR-10 IPC 10: 10 -> 20 over 1000 iterations; bound = 10 + floor(10 * it / 1000)
    (10, 20, 1000, 0, 10),
    (10, 20, 1000, 99, 10),     # 10 * 99 / 1000 = 0.99 -> 0
    (10, 20, 1000, 100, 11),
    (10, 20, 1000, 500, 15),    # the middle
    (10, 20, 1000, 999, 19),    # 9.99 -> 9
    (10, 20, 1000, 1000, 20),   # the end of the window
    (10, 20, 1000, 7000, 20),   # after it: stays at the final bound
    # CIFAR-10 IPC 50: 20 -> 40 over 2000 iterations
    (20, 40, 2000, 150, 21),    # 20 * 150 / 2000 = 1.5 -> 1
    (20, 40, 2000, 1000, 30),
    (20, 40, 2000, 2500, 40),
    # CIFAR-10 IPC 1: a fixed window (no initial bound) at 4
    (None, 4, 0, 0, 4),
    (None, 4, 0, 5000, 4),
])
def test_start_epoch_bound_grows_linearly_to_the_final_max(initial, final, window, it, bound):
    m = DATMConfig(min_start_epoch=0, initial_max_start_epoch=initial, max_start_epoch=final, window_iterations=window)
    assert start_epoch_bound(m, it) == bound


# --- initial images and soft labels on a hand-built buffer ------------------------------------------
#
# The "network" is a bias-free linear map from the 4 pixels of a 1x2x2 image to 3 classes, so the logits
# of the basis image e_j are column j of the weight W (3 x 4). Each expert's last epoch sets the columns.

COLUMNS = {  # expert -> logits of e0, e1, e2, e3 (columns of W at its last epoch)
    0: [[3, 1, 0], [0, 2, 1], [1, 0, 2], [0, 0, 9]],  # right on e0 (0), e1 (1), e2 (2); e3 -> class 2
    1: [[1, 4, 0], [0, 5, 1], [0, 1, 6], [7, 0, 0]],  # wrong on e0; right on e1, e2; e3 -> class 0
    2: [[5, 0, 1], [3, 1, 0], [1, 1, 4], [0, 8, 0]],  # right on e0, e2; wrong on e1; e3 -> class 1
}


def toy_student() -> FlatModel:
    return FlatModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False)))


def basis(j: int) -> torch.Tensor:
    return torch.eye(4)[j].reshape(1, 2, 2)


def toy_buffer(folder) -> Buffer:
    """Three experts of one epoch: epoch 0 predicts class 0 everywhere (so using it would show), epoch 1 = COLUMNS."""
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format_version": 1}))
    for e, cols in COLUMNS.items():
        last = torch.tensor(cols, dtype=torch.float32).T.reshape(-1)  # W (3 x 4), row-major, as nn.Linear holds it
        first = torch.zeros(3, 4)
        first[0] = 1.0
        save_file({"trajectory": torch.stack([first.reshape(-1), last])}, str(folder / f"expert_{e:04d}.safetensors"))
        (folder / f"expert_{e:04d}.json").write_text(json.dumps({"id": e, "test_accuracy": 1.0}))
    return Buffer.open(folder)


def toy_data() -> SimpleNamespace:
    """Class 0: e0, e3; class 1: e1, e3; class 2: e2, e3."""
    x = torch.stack([basis(0), basis(3), basis(1), basis(3), basis(2), basis(3)])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    return SimpleNamespace(name="toy", train_x=x, train_y=y, num_classes=3,
                           indices_of_class=lambda c: torch.nonzero(y == c).flatten())


def toy_context(tmp_path, ipc: int) -> RunContext:
    method = OmegaConf.structured(DATMConfig(lr_y=5.0, momentum_y=0.9))
    cfg = OmegaConf.create({"ipc": ipc, "buffer": {"epochs": 1}, "method": method})
    return RunContext(cfg=cfg, data=toy_data(), device=torch.device("cpu"), out_dir=tmp_path, tracker=None)


@pytest.mark.parametrize("seed", range(6))
def test_initial_images_are_ones_expert_0_gets_right_and_labels_average_the_right_experts(tmp_path, seed):
    buffer = toy_buffer(tmp_path / "buffer")
    syn = datm.initial_synthetic(toy_context(tmp_path, ipc=1), buffer, [0, 1, 2], toy_student(),
                                 torch.Generator().manual_seed(seed))
    # expert 0 is wrong on e3 in classes 0 and 1, so those classes must start from e0 and e1; in class 2
    # it is right on both e2 and e3, so either may be drawn
    assert torch.equal(syn.images[0], basis(0)) and torch.equal(syn.images[1], basis(1))
    assert torch.equal(syn.labels, torch.tensor([0, 1, 2]))
    # e0: experts 0 and 2 are right -> ([3,1,0] + [5,0,1]) / 2;  e1: experts 0 and 1 -> ([0,2,1] + [0,5,1]) / 2
    expected = {0: [4.0, 0.5, 0.5], 1: [0.0, 3.5, 1.0]}
    if torch.equal(syn.images[2], basis(2)):  # e2: all three are right -> ([1,0,2] + [0,1,6] + [1,1,4]) / 3
        expected[2] = [2 / 3, 2 / 3, 4.0]
    else:  # e3 in class 2: only expert 0 is right -> [0,0,9]
        assert torch.equal(syn.images[2], basis(3))
        expected[2] = [0.0, 0.0, 9.0]
    assert torch.allclose(syn.label_logits, torch.tensor([expected[i] for i in range(3)]))
    assert syn.label_logits.requires_grad
    group = syn.opt_label.param_groups[0]
    assert group["lr"] == 5.0 and group["momentum"] == 0.9  # the labels' own optimiser
    assert syn.opt_img.param_groups[0]["momentum"] == 0.5


def test_classes_expert_0_cannot_fill_take_the_next_experts_right_images_or_are_refused(tmp_path):
    buffer = toy_buffer(tmp_path / "buffer")
    syn = datm.initial_synthetic(toy_context(tmp_path, ipc=2), buffer, [0, 1, 2], toy_student(),
                                 torch.Generator().manual_seed(0))
    # class 0: expert 0 is right only on e0; expert 1 is right on e3 (as class 0) -> e0 first, then e3
    assert torch.equal(syn.images[0], basis(0)) and torch.equal(syn.images[1], basis(3))
    # the e3 of class 0: only expert 1 is right on it, so its label is expert 1's logits [7, 0, 0]
    assert torch.allclose(syn.label_logits[1], torch.tensor([7.0, 0.0, 0.0]))
    # class 1 needs expert 2 (right on e3 as class 1); without it the class cannot be filled
    with pytest.raises(DDError, match="class 1 of toy"):
        datm.initial_synthetic(toy_context(tmp_path, ipc=2), buffer, [0, 1], toy_student(),
                               torch.Generator().manual_seed(0))


# --- the skip rule ----------------------------------------------------------------------------------

def toy_iteration(skip_loss_above):
    """One DATM outer iteration of the toy network on the three basis images, with soft labels."""
    gen = torch.Generator().manual_seed(0)
    m = DATMConfig(lr_img=10.0, lr_lr=1e-3, lr_y=5.0)
    images = torch.stack([basis(0), basis(1), basis(2)]) + 0.1 * torch.randn(3, 1, 2, 2, generator=gen)
    syn = Synthetic.create(images, torch.tensor([0, 1, 2]), 0.1, m, torch.randn(3, 3, generator=gen), label_lr=m.lr_y,
                           label_momentum=m.momentum_y)
    start, target = torch.zeros(12), torch.randn(12, generator=gen)
    before = (syn.images.detach().clone(), syn.syn_lr.detach().clone(), syn.label_logits.detach().clone())
    plan = plan_steps(3, None, 4, torch.Generator().manual_seed(0))
    res = outer_iteration(syn, toy_student(), Segment(0, 0, start, target), plan, None, InnerConfig(engine="unroll"),
                          min_lr=1e-6, skip_loss_above=skip_loss_above)
    return res, syn, before


def test_a_loss_above_the_threshold_leaves_images_lr_and_labels_unchanged():
    res, syn, (images, lr, logits) = toy_iteration(skip_loss_above=None)
    loss = float(res.loss)
    assert 0 < loss < 10
    # the same iteration without a threshold moves all three (so the test below can fail)
    assert not torch.equal(syn.images, images) and not torch.equal(syn.syn_lr, lr)
    assert not torch.equal(syn.label_logits, logits)

    res, syn, (images, lr, logits) = toy_iteration(skip_loss_above=0.5 * loss)
    assert float(res.loss) == pytest.approx(loss) and res.is_finite()
    assert torch.equal(syn.images, images) and torch.equal(syn.syn_lr, lr) and torch.equal(syn.label_logits, logits)
    assert all(not opt.state for opt in (syn.opt_img, syn.opt_lr, syn.opt_label))  # no momentum was taken

    res, syn, (images, _, logits) = toy_iteration(skip_loss_above=2 * loss)  # below the threshold: updated
    assert not torch.equal(syn.images, images) and not torch.equal(syn.label_logits, logits)


# --- bad values and the pipeline --------------------------------------------------------------------

TINY = [
    "method=datm", "dataset=digits", "ipc=1", "model.width=6", "eval.epochs=5", "eval.num_models=1",
    "buffer.num_experts=2", "buffer.epochs=2", "buffer.batch_size=32", "method.expert_epochs=1",
    "method.min_start_epoch=0", "method.initial_max_start_epoch=1", "method.max_start_epoch=2",
    "method.window_iterations=4", "method.syn_steps=3", "method.iterations=8", "method.eval_every=100",
    "progress=false", "logger=none",
]


def config(tmp_path, *extra):
    return image_cfg(*TINY, f"buffer.dir={tmp_path / 'buffer'}", *extra)


@pytest.mark.parametrize("override,message", [
    ("method.initial_max_start_epoch=3", "initial_max_start_epoch=3"),  # above max_start_epoch=2
    ("method.initial_max_start_epoch=0", "initial_max_start_epoch=0"),  # not above min_start_epoch=0
    ("method.window_iterations=0", "window_iterations=0"),  # the window grows from 1 to 2
    ("method.window_iterations=-5", "window_iterations=-5"),
    ("method.lr_y=-1", "lr_y=-1"),
    ("method.momentum_y=1.0", "momentum_y=1.0"),
    ("method.skip_loss_above=0", "skip_loss_above=0"),
    ("method.max_start_epoch=4", "buffer.epochs=2"),
    ("method.syn_steps=0", "syn_steps=0"),
])
def test_bad_datm_settings_are_refused_before_any_output(tmp_path, override, message):
    with pytest.raises(DDError, match=message):
        run(config(tmp_path, override), tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "buffer").exists()


def test_mtt_only_keys_are_unknown_to_datm(tmp_path):
    with pytest.raises(ConfigCompositionException):
        config(tmp_path, "method.lr_label=3")


def test_dd_distill_datm_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    args = [*[a for a in TINY if a != "logger=none"], f"buffer.dir={tmp_path / 'buffer'}", f"hydra.run.dir={run_dir}"]
    out = run_cli("dd-distill", *args, in_process=True)  # a real process in test_cli
    assert out.returncode == 0, out.stderr
    assert "datm digits ipc=1: test accuracy" in out.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "datm" and 0 <= results["metric"]["mean"] <= 1
    ds = load(run_dir / "distilled")
    assert ds.images.shape == (10, 1, 16, 16) and ds.labels.shape == (10, 10)  # soft labels, exported
    assert torch.allclose(ds.labels.sum(1), torch.ones(10), atol=1e-5) and ds.meta["method"] == "datm"
    assert 0 <= ds.meta["skipped_above_threshold"] <= 8
    history = torch.load(run_dir / "checkpoint.pt", weights_only=True)["state"]["history"]
    starts = {h["iteration"]: h["start_epoch"] for h in history if "loss" in h}
    assert sorted(starts) == list(range(8))
    # bound 1 + floor(1 * it / 4): 1 for iterations 0-3 (only s = 0), 2 from iteration 4 on (s in {0, 1})
    assert all(starts[it] == 0 for it in range(4)) and all(starts[it] in (0, 1) for it in range(4, 8))


def test_resume_reaches_the_same_images_and_labels(tmp_path, monkeypatch):
    import dd.image.methods.mtt as mtt

    run(config(tmp_path, "method.checkpoint_every=3"), tmp_path / "whole")
    real = mtt.meta_gradient
    # a kill at the fifth call, after the checkpoint at iteration 3
    monkeypatch.setattr(mtt, "meta_gradient", dies_at_call(real, 5))
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path, "method.checkpoint_every=3"), tmp_path / "killed")
    monkeypatch.setattr(mtt, "meta_gradient", real)
    run(config(tmp_path, "method.checkpoint_every=3", "resume=true"), tmp_path / "killed")
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["syn_lr"], b["syn_lr"])
    assert torch.equal(a["label_logits"], b["label_logits"])
    steps = [[(h["iteration"], h["start_epoch"], h.get("skipped", False)) for h in c["state"]["history"] if "loss" in h]
             for c in (a, b)]
    assert steps[0] == steps[1] and a["state"]["skipped_above"] == b["state"]["skipped_above"]
