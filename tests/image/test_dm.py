"""Distribution matching: the loss against its closed form, Siamese augmentation inside the step,
a fresh network every iteration, resume, refused values, and the CLI end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import dies_at_call, image_cfg, run_cli

from dd.config import register_configs
from dd.data import DSA
from dd.errors import DDError
from dd.export import load
from dd.image.base import LearnedImages
from dd.image.methods import dm
from dd.pipeline import run

register_configs()

TINY = ["method=dm", "dataset=digits", "ipc=1", "model.width=6", "eval.epochs=5", "eval.num_models=1",
        "method.iterations=6", "method.eval_every=100", "method.checkpoint_every=3", "method.batch_real=16",
        "progress=false", "logger=none"]


def config(*extra):
    return image_cfg(*TINY, *extra)


# --- the loss ---------------------------------------------------------------------------------------


def test_dm_loss_of_a_pixel_sum_embedding_is_the_hand_computed_distance():
    # embedding: the sum of an image's 4 pixels (one feature)
    def embed(x):
        return x.flatten(1).sum(1, keepdim=True)

    reals = [torch.ones(3, 1, 2, 2), torch.tensor([0.0, 2.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)]
    syns = [torch.zeros(1, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)]
    # class 0: real mean embedding 4, synthetic 0 -> 16; class 1: real mean (0 + 8) / 2 = 4, synthetic 2 -> 4
    assert float(dm.dm_loss(embed, reals, syns)) == pytest.approx(20.0)


@pytest.mark.parametrize("together", [False, True])
def test_dm_loss_and_its_gradient_match_the_closed_form_for_a_linear_embedding(together):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 12, generator=gen, dtype=torch.float64)  # psi(x) = W vec(x)

    def embed(x):
        return x.flatten(1) @ w.T

    reals = [torch.randn(n, 3, 2, 2, generator=gen, dtype=torch.float64) for n in (7, 4, 9)]
    syns = [torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64).requires_grad_(True) for _ in range(3)]
    loss = dm.dm_loss(embed, reals, syns, together=together)
    loss.backward()

    wn = w.numpy()
    expected = 0.0
    for r, s in zip(reals, syns):
        diff = r.flatten(1).numpy().mean(0) - s.detach().flatten(1).numpy().mean(0)  # mean image difference
        expected += float(np.sum((wn @ diff) ** 2))
        # d/ds_j ||W (mr - ms)||^2 = -(2 / ipc) W^T W (mr - ms), the same for each of the ipc images
        grad = -(2 / len(s)) * wn.T @ wn @ diff
        np.testing.assert_allclose(s.grad.flatten(1).numpy(), np.tile(grad, (len(s), 1)), rtol=1e-10)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert all(r.grad is None for r in reals)  # the real side carries no gradient


# --- one iteration ----------------------------------------------------------------------------------


class RecordingDSA(DSA):
    """A DSA that remembers (seed, input, output) of every call."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def __call__(self, x, seed):
        out = super().__call__(x, seed)
        self.calls.append((seed, x.detach().clone(), out.detach().clone()))
        return out


def test_siamese_dsa_gives_the_real_and_synthetic_batch_one_transform_inside_the_step(digits_data):
    """Every real image of a class is a copy of that class's synthetic image: with one transform for both
    batches (same seed, batchwise) the mean embeddings agree whatever the transform, so loss and step are 0."""
    cfg = config("ipc=2")
    gen = torch.Generator().manual_seed(3)
    images, labels = dm.initial_images(digits_data, 2, "real", gen)
    syn = LearnedImages.create(images, labels, 2, cfg.method.lr_img, cfg.method.momentum)
    # class c: both synthetic images and all 5 real images are copies of one image
    with torch.no_grad():
        syn.images[1::2] = syn.images[0::2]
    before = syn.images.detach().clone()
    real_by_class = [syn.images[2 * c].detach().expand(5, -1, -1, -1).clone() for c in range(10)]
    dsa = RecordingDSA(flip=False, batchwise=True)
    plan = dm.draw_batches([5] * 10, 16, gen)
    net = dm.iteration_network(cfg.model, digits_data, 0, 0, "cpu")
    loss = dm.dm_iteration(syn, net, real_by_class, plan, dsa)

    assert loss == pytest.approx(0.0, abs=1e-9)
    assert torch.allclose(syn.images.detach(), before, atol=1e-9)  # a zero gradient moves nothing
    assert len(dsa.calls) == 20  # the real batches, then the synthetic ones
    changed = 0
    for c in range(10):
        (seed_r, x_r, out_r), (seed_s, _, out_s) = dsa.calls[c], dsa.calls[10 + c]
        assert seed_r == seed_s == plan[c].aug_seed
        assert torch.allclose(out_r, out_s[:1].expand_as(out_r), atol=1e-6)  # one transform for all 5 images
        changed += not torch.allclose(out_r, x_r)
    assert changed >= 5  # and the transforms did something


def test_without_siamese_seeds_the_copies_would_not_match(digits_data):
    """The control of the test above: another seed for the synthetic batch leaves a positive loss."""
    cfg = config()
    x = digits_data.train_x[:1]
    net = dm.iteration_network(cfg.model, digits_data, 0, 0, "cpu")
    dsa = DSA(flip=False, batchwise=True)
    siamese = sum(float(dm.dm_loss(net.embed, [x.expand(4, -1, -1, -1)], [x], dsa, [s])) for s in range(5))
    assert siamese == pytest.approx(0.0, abs=1e-9)
    mismatched = sum(float(dm.dm_loss(net.embed, [dsa(x.expand(4, -1, -1, -1), seed=s)], [dsa(x, seed=s + 100)]))
                     for s in range(5))
    assert mismatched > 1e-4


def test_each_iteration_gets_a_fresh_network_reproducible_from_the_seed(digits_data, tmp_path, monkeypatch):
    def flat(net):
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    cfg = config()
    a0, a0_again = (flat(dm.iteration_network(cfg.model, digits_data, 0, 0, "cpu")) for _ in range(2))
    a1 = flat(dm.iteration_network(cfg.model, digits_data, 0, 1, "cpu"))
    b0 = flat(dm.iteration_network(cfg.model, digits_data, 1, 0, "cpu"))
    assert torch.equal(a0, a0_again)
    assert not torch.allclose(a0, a1) and not torch.allclose(a0, b0)

    seen = []
    real = dm.dm_iteration

    def recording(syn, net, *a, **k):
        start = flat(net).cpu()  # on the run's device; the reference network below is built on the CPU
        out = real(syn, net, *a, **k)
        assert torch.equal(flat(net), start)  # the step trains the images, never the network
        seen.append(start)
        return out

    monkeypatch.setattr(dm, "dm_iteration", recording)
    run(config("seed=4"), tmp_path / "run")
    assert len(seen) == 6
    for it, params in enumerate(seen):  # iteration t's network is the stream ("dm_net", seed, t)
        assert torch.equal(params, flat(dm.iteration_network(cfg.model, digits_data, 4, it, "cpu")))
    assert len({tuple(p[:8].tolist()) for p in seen}) == 6


def test_distillation_lowers_the_loss_and_resume_reaches_the_same_images(tmp_path, monkeypatch):
    whole = run(config(), tmp_path / "whole")
    assert whole["method"] == "dm" and {"distill_s", "s_per_iteration"} <= set(whole["timings"])
    real = dm.dm_iteration
    # a kill at the fifth call, after the checkpoint at iteration 3
    monkeypatch.setattr(dm, "dm_iteration", dies_at_call(real, 5))
    with pytest.raises(KeyboardInterrupt):
        run(config(), tmp_path / "killed")
    assert not (tmp_path / "killed" / "results.json").exists()
    monkeypatch.setattr(dm, "dm_iteration", real)
    run(config("resume=true"), tmp_path / "killed")
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["images"], b["images"])
    losses = [h["loss"] for h in a["state"]["history"] if "loss" in h]
    assert losses == [h["loss"] for h in b["state"]["history"] if "loss" in h]
    assert sum(losses[-2:]) < sum(losses[:2])  # matching improves


@pytest.mark.parametrize("override,message", [
    ("method.iterations=0", "method.iterations=0"),
    ("method.lr_img=-1", "method.lr_img=-1"),
    ("method.batch_real=0", "method.batch_real=0"),
    ("method.eval_every=-1", "method.eval_every=-1"),
    ("method.momentum=1.5", "method.momentum=1.5"),
    ("method.init=zeros", "method.init 'zeros'"),
    ("method.dsa_strategy=color_blur", "'blur'"),
    ("ipc=1000", "ipc=1000"),
])
def test_bad_values_are_refused_before_any_output(tmp_path, override, message):
    with pytest.raises(DDError, match=message):
        run(config(override), tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "distilled").exists()


# --- as a user runs it -----------------------------------------------------------------------------


def cli(*args):
    """dd-distill called in this process (conftest.run_cli: its output and exit status as a user sees them; the
    command runs as a real process in test_cli)."""
    return run_cli("dd-distill", *args, in_process=True)


def test_dd_distill_dm_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    out = cli("method=dm", "dataset=digits", "ipc=1", "model.width=6", "method.iterations=3", "method.eval_every=2",
              "method.batch_real=32", "eval.epochs=5", "eval.num_models=1", "progress=false",
              f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    assert "dm digits ipc=1: test accuracy" in out.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "dm" and len(results["metric"]["per_run"]) == 1
    ds = load(run_dir / "distilled")
    assert ds.images.shape == (10, 1, 16, 16) and torch.isfinite(ds.images).all()
    assert ds.meta["iteration"] == 3 and [r["iteration"] for r in ds.meta["rounds"]] == [0, 2]
    assert sorted(p.name for p in (run_dir / "progress").glob("iter_*.png")) == ["iter_000000.png", "iter_000002.png"]
    assert (run_dir / "curves.png").is_file() and (run_dir / "grid.png").is_file()


def test_dd_distill_dm_bad_value_exits_2_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    out = cli("method=dm", "method.lr_img=0", "progress=false", f"hydra.run.dir={run_dir}")
    assert out.returncode == 2
    assert "lr_img=0" in out.stderr and out.stderr.strip().count("\n") == 0
    assert not (run_dir / "results.json").exists()


def test_eval_every_zero_runs_no_round_during_distillation(tmp_path, monkeypatch):
    import dd.image.rounds as rounds

    calls = []
    monkeypatch.setattr(rounds, "evaluate_set", lambda *a, **k: calls.append(k["round"]))
    results = run(config("method.eval_every=0"), tmp_path / "run")
    assert calls == [] and 0 <= results["metric"]["mean"] <= 1  # the pipeline's final round 0 still ran
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert not any("acc_mean" in h for h in saved["state"]["history"])
