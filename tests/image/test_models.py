"""Model zoo, factory and FlatModel tests (CPU, small widths, a few seconds)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from dd.errors import DDError
from dd.models import MODEL_NAMES, ConvNet, FlatModel, build_model, model_has_state

SHAPES = [(1, 16, 16), (1, 28, 28), (3, 32, 32), (3, 64, 64)]
NUM_CLASSES = 7


def small(name: str, c: int, h: int, w: int, **options) -> nn.Module:
    """Build `name`, shrinking the ConvNet so the grid of tests stays fast."""
    if name == "convnet":
        options.setdefault("width", 16)
    torch.manual_seed(0)
    return build_model(name, c, NUM_CLASSES, (h, w), **options)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_and_functional_call(name, shape):
    c, h, w = shape
    model = small(name, c, h, w)
    x = torch.randn(2, c, h, w)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    assert model.embed(x).dim() == 2

    params = dict(model.named_parameters())
    torch.testing.assert_close(functional_call(model, params, (x,)), out)

    flat_model = FlatModel(model)
    torch.testing.assert_close(flat_model(flat_model.flatten(), x), out)


def test_default_width_convnet():
    torch.manual_seed(0)
    model = ConvNet(3, 10, (32, 32))
    x = torch.randn(2, 3, 32, 32)
    assert model.embed(x).shape == (2, 128 * 4 * 4)
    assert model(x).shape == (2, 10)
    assert model.classifier.in_features == 2048


@pytest.mark.parametrize("size,depth,side", [(16, 2, 4), (28, 3, 3), (32, 3, 4), (64, 4, 4)])
def test_convnet_auto_depth(size, depth, side):
    model = ConvNet(1, 10, (size, size), width=8)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == depth
    assert model.embed(torch.randn(1, 1, size, size)).shape == (1, 8 * side * side)


def test_convnet_first_pad_treats_28_as_32():
    # Dataset Condensation code: the first conv pads 28x28 inputs by 3, so ConvNet-3 ends on 4x4
    model = ConvNet(1, 10, (28, 28), width=8, first_pad=3)
    assert model.feature_shape == (8, 4, 4)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 3  # auto depth from the padded 32
    assert [m.padding for m in model.modules() if isinstance(m, nn.Conv2d)] == [(3, 3), (1, 1), (1, 1)]
    assert model.embed(torch.randn(2, 1, 28, 28)).shape == (2, 8 * 4 * 4)
    assert ConvNet(1, 10, (28, 28), first_pad=3).feature_shape == (128, 4, 4)
    # None is today's padding 1; 0 shrinks the map by 2; pool none keeps the first conv's size
    assert ConvNet(1, 10, (28, 28), width=8, first_pad=None).feature_shape == (8, 3, 3)
    assert ConvNet(3, 10, (32, 32), width=8, first_pad=0, depth=1).feature_shape == (8, 15, 15)
    model = ConvNet(1, 10, (28, 28), width=8, depth=2, pool="none", first_pad=3)
    assert model.feature_shape == (8, 32, 32) and model.embed(torch.randn(1, 1, 28, 28)).shape == (1, 8 * 32 * 32)
    assert build_model("convnet", 1, 10, (28, 28), width=8, first_pad=3).feature_shape == (8, 4, 4)


@pytest.mark.parametrize("pad", [-1, 1.5, True, "3"])
def test_convnet_bad_first_pad(pad):
    with pytest.raises(DDError, match="first_pad"):
        ConvNet(1, 10, (28, 28), width=8, first_pad=pad)


def test_convnet_pool_none_keeps_spatial_size():
    model = ConvNet(3, 10, (16, 16), width=8, depth=2, pool="none")
    assert model.embed(torch.randn(1, 3, 16, 16)).shape == (1, 8 * 16 * 16)


def test_convnet_too_deep_is_a_user_error():
    with pytest.raises(DDError, match="depth"):
        ConvNet(1, 10, (16, 16), width=8, depth=5)


@pytest.mark.parametrize(
    "norm,check",
    [
        ("instance", lambda m: isinstance(m, nn.GroupNorm) and m.num_groups == 8 and m.affine),
        ("batch", lambda m: isinstance(m, nn.BatchNorm2d)),
        ("layer", lambda m: isinstance(m, nn.GroupNorm) and m.num_groups == 1),
        ("group", lambda m: isinstance(m, nn.GroupNorm) and m.num_groups == 4),
        ("none", lambda m: isinstance(m, nn.Identity)),
    ],
)
def test_convnet_norm_types(norm, check):
    model = ConvNet(3, 10, (32, 32), width=8, norm=norm)
    assert check(model.features[1])


@pytest.mark.parametrize(
    "act,cls", [("relu", nn.ReLU), ("leakyrelu", nn.LeakyReLU), ("sigmoid", nn.Sigmoid), ("gelu", nn.GELU)]
)
def test_convnet_act_types(act, cls):
    assert isinstance(ConvNet(3, 10, (32, 32), width=8, act=act).features[2], cls)


def test_convnet_pool_types():
    assert isinstance(ConvNet(3, 10, (32, 32), width=8, pool="max").features[3], nn.MaxPool2d)
    assert isinstance(ConvNet(3, 10, (32, 32), width=8, pool="avg").features[3], nn.AvgPool2d)


def test_vgg_and_resnet_norm_options():
    def norms(model):
        return {type(m) for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))}

    assert norms(build_model("vgg11", 3, 10, (32, 32))) == {nn.GroupNorm}
    assert norms(build_model("vgg11", 3, 10, (32, 32), norm="batch")) == {nn.BatchNorm2d}
    assert norms(build_model("resnet18", 3, 10, (32, 32))) == {nn.BatchNorm2d}
    assert norms(build_model("resnet18_ap", 3, 10, (32, 32), norm="instance")) == {nn.GroupNorm}


def test_resnet18_ap_downsamples_by_average_pooling():
    model = build_model("resnet18_ap", 3, 10, (32, 32), norm="instance")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.stride == (1, 1) for m in convs)
    assert any(isinstance(m, nn.AvgPool2d) for m in model.modules())


def test_model_has_state():
    assert model_has_state(build_model("resnet18", 3, 10, (32, 32), norm="batch"))
    assert not model_has_state(build_model("resnet18", 3, 10, (32, 32), norm="instance"))
    assert not model_has_state(build_model("convnet", 3, 10, (32, 32), width=8))
    assert model_has_state(build_model("convnet", 3, 10, (32, 32), width=8, norm="batch"))


def test_unknown_model_lists_choices():
    with pytest.raises(DDError) as err:
        build_model("transformer", 3, 10, (32, 32))
    message = str(err.value)
    assert "'transformer'" in message and "\n" not in message
    assert all(name in message for name in MODEL_NAMES)


@pytest.mark.parametrize(
    "option,value,allowed",
    [
        ("norm", "weird", ["instance", "batch", "layer", "group", "none"]),
        ("act", "tanh", ["relu", "leakyrelu", "sigmoid", "gelu"]),
        ("pool", "min", ["avg", "max", "none"]),
    ],
)
def test_unknown_option_value_lists_choices(option, value, allowed):
    with pytest.raises(DDError) as err:
        build_model("convnet", 3, 10, (32, 32), width=8, **{option: value})
    message = str(err.value)
    assert repr(value) in message and all(a in message for a in allowed)


def test_inapplicable_options():
    # None means "not set" and is ignored, whatever the model.
    build_model("mlp", 1, 10, (28, 28), width=None, norm=None, act=None)
    build_model("resnet18", 3, 10, (32, 32), depth=None, norm=None)
    with pytest.raises(DDError, match="'act'.*'vgg11'.*norm"):
        build_model("vgg11", 3, 10, (32, 32), act="relu")
    with pytest.raises(DDError, match="'norm'.*'lenet'"):
        build_model("lenet", 1, 10, (28, 28), norm="batch")
    # first_pad is a ConvNet option; the other models refuse it rather than ignore it
    build_model("resnet18", 3, 10, (32, 32), first_pad=None)
    for name in ("mlp", "lenet", "alexnet", "vgg11", "resnet18", "resnet18_ap"):
        with pytest.raises(DDError, match=f"'first_pad'.*'{name}'"):
            build_model(name, 1, 10, (28, 28), first_pad=3)


# --- FlatModel -------------------------------------------------------------


def tiny_convnet(dtype=torch.float32, **options) -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(1, 5, (16, 16), width=8, **options).to(dtype)


def test_flatten_unflatten_round_trip():
    model = tiny_convnet()
    fm = FlatModel(model)
    flat = fm.flatten()
    assert flat.shape == (sum(p.numel() for p in model.parameters()),) == (fm.numel,)
    params = fm.unflatten(flat)
    assert list(params) == fm.names
    for name, p in model.named_parameters():
        torch.testing.assert_close(params[name], p.detach())
    torch.testing.assert_close(fm.flatten(params), flat)
    with pytest.raises(ValueError):
        fm.unflatten(flat[:-1])


def test_unflatten_keeps_graph():
    fm = FlatModel(tiny_convnet())
    flat = fm.flatten().requires_grad_()
    total = sum((i + 1) * p.sum() for i, p in enumerate(fm.unflatten(flat).values()))
    (grad,) = torch.autograd.grad(total, flat)
    expected = torch.cat([torch.full((n,), float(i + 1)) for i, n in enumerate(fm.numels)])
    torch.testing.assert_close(grad, expected)


def test_flat_gradient_matches_module_gradient():
    model = tiny_convnet()
    fm = FlatModel(model)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 5, (4,))
    loss_fn = nn.CrossEntropyLoss()

    grads = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
    flat = fm.flatten().requires_grad_()
    (flat_grad,) = torch.autograd.grad(loss_fn(fm(flat, x), y), flat)
    torch.testing.assert_close(flat_grad, torch.cat([g.reshape(-1) for g in grads]))


def test_hessian_vector_product_through_instance_norm():
    # float64 so a central finite difference of gradients is an accurate reference.
    fm = FlatModel(tiny_convnet(torch.float64, norm="instance"))
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 5, (4,))
    loss_fn = nn.CrossEntropyLoss()
    theta = fm.flatten()
    v = torch.randn_like(theta)

    flat = theta.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(fm(flat, x), y), flat, create_graph=True)
    (hvp,) = torch.autograd.grad(grad @ v, flat)

    def grad_at(t):
        t = t.clone().requires_grad_()
        return torch.autograd.grad(loss_fn(fm(t, x), y), t)[0]

    eps = 1e-5
    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    assert hvp.norm() > 0
    torch.testing.assert_close(hvp, fd, rtol=1e-4, atol=1e-6)


def test_load_into_copies_weights():
    model = tiny_convnet()
    fm = FlatModel(model)
    x = torch.randn(2, 1, 16, 16)
    new = torch.randn(fm.numel, requires_grad=True)
    fm.load_into(new)
    torch.testing.assert_close(fm.flatten(), new.detach())
    torch.testing.assert_close(model(x), fm(new, x))
    assert all(p.grad is None for p in model.parameters())


def test_flat_call_uses_module_batchnorm_buffers():
    model = tiny_convnet(norm="batch")
    fm = FlatModel(model)
    before = model.features[1].running_mean.clone()
    fm(fm.flatten(), torch.randn(4, 1, 16, 16) + 3.0)
    assert not torch.equal(model.features[1].running_mean, before)
