"""The meta-gradient engines against the fully unrolled reference."""

import pytest
import torch

from dd.data import DSA
from dd.errors import DDError
from dd.image.methods.mtt import plan_steps
from dd.image.train import set_loss
from dd.inner import meta_gradient
from dd.models import FlatModel, build_model


def problem(syn_steps: int, batch_syn: int | None, dtype=torch.float64, soft=False, per_step_lr=False):
    """A trajectory-matching problem on a tiny instance-norm ConvNet, DSA and minibatches included."""
    torch.manual_seed(0)
    model = build_model("convnet", 1, 4, (16, 16), width=6).to(dtype)
    student = FlatModel(model)
    images = torch.randn(8, 1, 16, 16, dtype=dtype, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(2)
    label_logits = torch.randn(8, 4, dtype=dtype, requires_grad=True)
    theta0 = student.flatten()
    target = theta0 + 0.05 * torch.randn_like(theta0)
    plan = plan_steps(len(images), batch_syn, syn_steps, torch.Generator().manual_seed(1))
    dsa = DSA(flip=False)

    def step_loss(theta, learn, i):
        idx, seed = plan[i]
        y = torch.softmax(learn[1][idx], 1) if soft else labels[idx]
        return set_loss(student(theta, dsa(learn[0][idx], seed=seed)), y)

    def outer(theta_n):
        return torch.sum((theta_n - target) ** 2) / torch.sum((theta0 - target) ** 2)

    lr = torch.full((syn_steps,) if per_step_lr else (), 0.05, dtype=dtype, requires_grad=True)
    learnables = [images, label_logits] if soft else [images]
    return step_loss, outer, theta0, learnables, lr


def relerr(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("syn_steps,batch_syn", [(1, None), (5, None), (5, 3)])
@pytest.mark.parametrize("engine", ["reverse", "higher"])
def test_exact_engines_equal_unroll(engine, syn_steps, batch_syn):
    step_loss, outer, theta0, learn, lr = problem(syn_steps, batch_syn)
    ref = meta_gradient("unroll", step_loss, outer, theta0, learn, lr, syn_steps)
    got = meta_gradient(engine, step_loss, outer, theta0, learn, lr, syn_steps)
    assert ref.grads[0].abs().sum() > 0 and ref.lr_grad.abs() > 0
    assert torch.allclose(got.loss, ref.loss, rtol=1e-12, atol=0)
    assert relerr(got.grads[0], ref.grads[0]) < 1e-9
    assert relerr(got.lr_grad, ref.lr_grad) < 1e-9
    assert torch.allclose(got.theta, ref.theta, rtol=0, atol=1e-12)


def test_reverse_equals_unroll_in_float32():
    step_loss, outer, theta0, learn, lr = problem(5, 3, dtype=torch.float32)
    ref = meta_gradient("unroll", step_loss, outer, theta0, learn, lr, 5)
    got = meta_gradient("reverse", step_loss, outer, theta0, learn, lr, 5)
    assert relerr(got.grads[0], ref.grads[0]) < 1e-4
    assert relerr(got.lr_grad, ref.lr_grad) < 1e-4


def test_reverse_soft_labels_and_per_step_lr():
    step_loss, outer, theta0, learn, lr = problem(4, 3, soft=True, per_step_lr=True)
    ref = meta_gradient("unroll", step_loss, outer, theta0, learn, lr, 4)
    got = meta_gradient("reverse", step_loss, outer, theta0, learn, lr, 4)
    assert lr.shape == got.lr_grad.shape == (4,)
    for g, r in zip(got.grads, ref.grads):
        assert r.abs().sum() > 0
        assert relerr(g, r) < 1e-9
    assert relerr(got.lr_grad, ref.lr_grad) < 1e-9


def test_unroll_matches_finite_differences():
    """The reference itself, against a central difference of the outer loss along a random direction."""
    step_loss, outer, theta0, learn, lr = problem(3, None)
    ref = meta_gradient("unroll", step_loss, outer, theta0, learn, lr, 3)
    direction = torch.randn_like(learn[0])
    eps = 1e-5

    def loss_at(x):
        return meta_gradient("unroll", step_loss, outer, theta0, [x.detach().requires_grad_(True)], lr, 3).loss

    numeric = (loss_at(learn[0] + eps * direction) - loss_at(learn[0] - eps * direction)) / (2 * eps)
    assert float(numeric) == pytest.approx(float(torch.sum(ref.grads[0] * direction)), rel=1e-5)


def test_tesla_is_exact_for_one_step_and_approximate_beyond():
    step_loss, outer, theta0, learn, lr = problem(1, None)
    ref = meta_gradient("unroll", step_loss, outer, theta0, learn, lr, 1)
    got = meta_gradient("tesla", step_loss, outer, theta0, learn, lr, 1)
    assert relerr(got.grads[0], ref.grads[0]) < 1e-9
    step_loss, outer, theta0, learn, lr = problem(5, 3)
    ref = meta_gradient("unroll", step_loss, outer, theta0, learn, lr, 5)
    got = meta_gradient("tesla", step_loss, outer, theta0, learn, lr, 5)
    err = relerr(got.grads[0], ref.grads[0])
    # TESLA drops the Hessian paths: it differs from the exact gradient, but points the same way.
    print(f"tesla vs unroll, 5 steps: relative error {err:.3e}")
    assert 1e-6 < err < 1.0
    assert float(torch.nn.functional.cosine_similarity(got.grads[0].flatten(), ref.grads[0].flatten(), dim=0)) > 0.5


def test_higher_momentum_optimizer_runs_and_differs_from_sgd():
    step_loss, outer, theta0, learn, lr = problem(3, None)
    sgd = meta_gradient("higher", step_loss, outer, theta0, learn, lr, 3)
    mom = meta_gradient("higher", step_loss, outer, theta0, learn, lr, 3, optimizer="momentum")
    assert torch.isfinite(mom.grads[0]).all()
    assert not torch.allclose(mom.theta, sgd.theta)


def test_bad_engine_arguments():
    step_loss, outer, theta0, learn, lr = problem(2, None)
    with pytest.raises(DDError, match="unknown"):
        meta_gradient("magic", step_loss, outer, theta0, learn, lr, 2)
    with pytest.raises(DDError, match="syn_steps=0"):
        meta_gradient("reverse", step_loss, outer, theta0, learn, lr, 0)
    with pytest.raises(DDError, match="needs inner.engine=higher"):
        meta_gradient("reverse", step_loss, outer, theta0, learn, lr, 2, optimizer="adam")


@pytest.mark.parametrize("fit", [1, 2, 3, 5])
def test_auto_engine_equals_unroll_whatever_the_segments(monkeypatch, fit):
    """auto with room for `fit` steps' graphs (5 = all of them: it is unroll) is exact."""
    from dd.inner import budget

    monkeypatch.setattr(budget, "steps_that_fit", lambda *a, **k: fit)
    step_loss, outer, theta0, learn, lr = problem(5, 3, soft=True, per_step_lr=True)
    ref = meta_gradient("unroll", step_loss, outer, theta0, learn, lr, 5)
    got = meta_gradient("auto", step_loss, outer, theta0, learn, lr, 5)
    assert torch.allclose(got.loss, ref.loss, rtol=1e-12, atol=0)
    for a, b in zip(got.grads, ref.grads):
        assert relerr(a, b) < 1e-10
    assert relerr(got.lr_grad, ref.lr_grad) < 1e-10
    assert torch.allclose(got.theta, ref.theta, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fit", [1, 2, 3, 4])
def test_auto_engine_recomputes_only_the_steps_it_cannot_keep(monkeypatch, fit):
    """Each step runs once with its graph; only the num_steps - fit steps outside the last, full segment
    also run once before, without one (segments are cut from the end)."""
    from dd.inner import budget

    monkeypatch.setattr(budget, "steps_that_fit", lambda *a, **k: fit)
    step_loss, outer, theta0, learn, lr = problem(5, 3)
    calls = []

    def counted(theta, learnables, i):
        calls.append(i)
        return step_loss(theta, learnables, i)

    meta_gradient("auto", counted, outer, theta0, learn, lr, 5)
    assert len(calls) == 5 + (5 - fit)
    assert sorted(set(range(5)) - set(calls[: 5 - fit])) == list(range(5 - fit, 5))  # the last `fit` ran once


def test_auto_engine_sizes_its_segments_from_the_budget():
    from dd.inner import budget

    step_loss, outer, theta0, learn, lr = problem(4, None)
    per_step = budget.graph_bytes_of_step(step_loss, theta0, learn, lr)
    assert per_step > theta0.numel() * theta0.element_size()  # more than the parameters alone
    mb = 3 * per_step / 2**20
    assert budget.steps_that_fit(step_loss, theta0, learn, lr, mb) == 3
    assert budget.steps_that_fit(step_loss, theta0, learn, lr, 1e-9) == 1  # never below one step
    with pytest.raises(DDError, match="memory_budget_mb=-1"):
        meta_gradient("auto", step_loss, outer, theta0, learn, lr, 4, memory_budget_mb=-1)
