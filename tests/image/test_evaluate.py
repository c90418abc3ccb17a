"""The evaluation protocol: K seeded models, numpy statistics, the lr schedule and the loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dd.errors import DDError
from dd.image.evaluate import EvalConfig, EvalResult, evaluate_set
from dd.image.methods.coreset import random_indices
from dd.image.train import fresh_model, lr_schedule, set_loss, train_on_set
from dd.models.factory import ModelConfig

MODEL = OmegaConf.structured(ModelConfig(name="convnet", width=8, norm="instance", act="relu", pool="avg"))


def eval_cfg(**kw):
    return OmegaConf.structured(EvalConfig(**kw))


@pytest.fixture(scope="module")
def subset(digits_data):
    idx = random_indices(digits_data, 10, seed=0)
    return digits_data.train_x[idx], digits_data.train_y[idx]


def test_evaluate_learns_and_reports_numpy_stats(digits_data, subset):
    x, y = subset
    res = evaluate_set(x, y, digits_data, MODEL, eval_cfg(num_models=2, epochs=40), seed=0, progress=False)
    assert isinstance(res, EvalResult)
    assert len(res.per_model) == 2
    assert res.mean == pytest.approx(float(np.mean(res.per_model)), abs=1e-12)
    assert res.std == pytest.approx(float(np.std(res.per_model)), abs=1e-12)  # population std
    assert res.epochs == 40 and res.lr == 0.01 and res.model == "convnet" and res.seconds > 0
    # each accuracy is a count over the 297 test images
    for a in res.per_model:
        assert 0 <= a <= 1 and abs(a * len(digits_data.test_y) - round(a * len(digits_data.test_y))) < 1e-9
    assert res.mean > 0.3, res.per_model  # chance is 0.1
    d = res.as_dict()
    assert d["per_model"] == res.per_model and d["mean"] == res.mean
    assert f"{100 * res.mean:.2f}" in str(res) and "K=2" in str(res)


def test_evaluate_is_seeded(digits_data, subset, monkeypatch):
    import dd.image.evaluate

    inits = []
    real_fresh_model = fresh_model

    def recording_fresh_model(*a, **kw):
        model = real_fresh_model(*a, **kw)
        inits.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
        return model

    monkeypatch.setattr(dd.image.evaluate, "fresh_model", recording_fresh_model)
    x, y = subset
    cfg = eval_cfg(num_models=2, epochs=2)
    a = evaluate_set(x, y, digits_data, MODEL, cfg, seed=5, progress=False)
    b = evaluate_set(x, y, digits_data, MODEL, cfg, seed=5, progress=False)
    assert a.per_model == b.per_model
    assert len(inits) == 4
    assert torch.equal(inits[0], inits[2]) and torch.equal(inits[1], inits[3])  # same seed, same models
    assert not torch.equal(inits[0], inits[1])  # the K models are not K copies of one


def test_explicit_lr_overrides_config(digits_data, subset, monkeypatch):
    seen = []
    real_sgd = torch.optim.SGD

    class Spy(real_sgd):
        def __init__(self, params, lr, **kw):
            seen.append(lr)
            super().__init__(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "SGD", Spy)
    x, y = subset
    cfg = eval_cfg(num_models=2, epochs=1, lr=0.5, batched=False)  # torch.optim.SGD: the unbatched path
    res = evaluate_set(x, y, digits_data, MODEL, cfg, lr=0.03, progress=False)
    assert seen == [0.03, 0.03] and res.lr == 0.03


@pytest.mark.parametrize("lr", [-0.1, 0.0, float("nan"), float("inf")])
def test_bad_lr_refused(digits_data, subset, lr):
    x, y = subset
    with pytest.raises(DDError, match="lr"):
        evaluate_set(x, y, digits_data, MODEL, eval_cfg(num_models=1, epochs=1), lr=lr, progress=False)
    with pytest.raises(DDError, match="lr"):
        evaluate_set(x, y, digits_data, MODEL, eval_cfg(num_models=1, epochs=1, lr=lr), progress=False)


@pytest.mark.parametrize("kw", [{"num_models": 0}, {"epochs": 0}, {"epochs": -1}])
def test_bad_counts_refused(digits_data, subset, kw):
    x, y = subset
    with pytest.raises(DDError):
        evaluate_set(x, y, digits_data, MODEL, eval_cfg(**{"num_models": 1, "epochs": 1, **kw}), progress=False)


@pytest.mark.parametrize("mode", ["one", "color_then_one", "all"])
def test_eval_dsa_mode_reaches_dsa(digits_data, subset, monkeypatch, mode):
    import dd.image.evaluate

    built = []
    real_dsa = dd.image.evaluate.DSA

    def spy(*a, **kw):
        built.append(real_dsa(*a, **kw))
        return built[-1]

    monkeypatch.setattr(dd.image.evaluate, "DSA", spy)
    x, y = subset
    evaluate_set(x, y, digits_data, MODEL, eval_cfg(num_models=1, epochs=1, dsa_mode=mode), progress=False)
    assert [d.mode for d in built] == [mode]
    assert EvalConfig().dsa_mode == "one"  # the reference's pick is the default
    with pytest.raises(DDError, match="DSA mode 'M'"):
        evaluate_set(x, y, digits_data, MODEL, eval_cfg(num_models=1, epochs=1, dsa_mode="M"), progress=False)


# --- set_loss --------------------------------------------------------------------------


def test_set_loss_one_hot_equals_hard_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(10, (16,), generator=g)
    soft = F.one_hot(y, 10).double()
    torch.testing.assert_close(set_loss(logits, soft), F.cross_entropy(logits, y))
    torch.testing.assert_close(set_loss(logits, y), F.cross_entropy(logits, y))


def test_set_loss_soft_labels_closed_form():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(8, 5, generator=g, dtype=torch.float64), 1)
    # H(p, softmax(z)) = logsumexp(z) - sum_j p_j z_j, averaged over the batch
    ref = (torch.logsumexp(logits, 1) - (p * logits).sum(1)).mean()
    torch.testing.assert_close(set_loss(logits, p), ref)
    # uniform labels: log(classes) minus the mean logit, per row
    u = torch.full((8, 5), 0.2, dtype=torch.float64)
    torch.testing.assert_close(set_loss(logits, u), (torch.logsumexp(logits, 1) - logits.mean(1)).mean())


# --- train_on_set lr schedule --------------------------------------------------------------


class RecordingSGD(torch.optim.SGD):
    """SGD that records the lr of every step."""

    instances: list = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lrs = []
        RecordingSGD.instances.append(self)

    def step(self, closure=None):
        self.lrs.append([g["lr"] for g in self.param_groups])
        return super().step(closure)


@pytest.mark.parametrize(("epochs", "batch_size"), [(6, 64), (5, 256), (2, 256)])
def test_lr_drops_tenfold_at_half_the_epochs(monkeypatch, epochs, batch_size):
    RecordingSGD.instances = []
    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.randn(100, 1, 3, 4), torch.arange(100) % 3
    steps_per_epoch = -(-100 // batch_size)
    train_on_set(model, x, y, schedule=lr_schedule(epochs), lr=0.2, batch_size=batch_size, momentum=0.9, weight_decay=5e-4,
                 generator=torch.Generator().manual_seed(0))
    (opt,) = RecordingSGD.instances
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    lrs = [lr for (lr,) in opt.lrs]
    assert len(lrs) == epochs * steps_per_epoch
    half = epochs // 2
    expected = [0.2] * (half * steps_per_epoch) + [0.2 * 0.1] * ((epochs - half) * steps_per_epoch)
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_train_on_set_changes_model_and_diverges_cleanly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(10, 1, 2, 2), torch.arange(10) % 2
    train_on_set(model, x, y, schedule=lr_schedule(2), lr=0.1, generator=torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(DDError, match="diverged"):
        train_on_set(model, x * 1e30, y, schedule=lr_schedule(3), lr=1e10, generator=torch.Generator().manual_seed(0))
