"""DSA: exact seeded replay, shapes, differentiability."""

import pytest
import torch

import dd.data.augment as augment
from dd.data import DSA, DSA_MODES, DSA_TRANSFORMS
from dd.errors import DDError

FULL = "color_crop_cutout_flip_scale_rotate"
SINGLE = ["color", "crop", "cutout", "flip", "scale", "rotate"]


def _batch(n=8, c=3, h=16, w=16, dtype=torch.float32):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0), dtype=dtype)


@pytest.mark.parametrize("mode", DSA_MODES)
@pytest.mark.parametrize("strategy", SINGLE + [FULL])
def test_same_seed_replays_exactly(strategy, mode):
    x = _batch()
    dsa = DSA(strategy, mode=mode)
    a, b = dsa(x, seed=123), DSA(strategy, mode=mode)(x.clone(), seed=123)
    assert a.shape == x.shape and torch.equal(a, b)


@pytest.fixture
def applied(monkeypatch):
    """Record the transforms each call applies: one list per call."""
    calls = []
    for name, transform in list(augment._TRANSFORMS.items()):
        def wrapped(r, shape, name=name, draw=transform.draw):
            calls[-1].append(name)
            return draw(r, shape)

        monkeypatch.setitem(augment._TRANSFORMS, name, transform._replace(draw=wrapped))

    def run(dsa, seeds, x=None):
        x = _batch(n=2, h=8, w=8) if x is None else x
        for s in seeds:
            calls.append([])
            dsa(x, seed=s)
        return calls[-len(seeds):]

    return run


def test_mode_one_is_the_reference_pick(applied):
    # The reference 'S' mode: one transform per call, color counting as one of six.
    calls = applied(DSA(FULL), range(1200))
    assert all(len(c) == 1 for c in calls)
    counts = {t: sum(c == [t] for c in calls) for t in SINGLE}
    assert all(150 <= k <= 250 for k in counts.values()), counts  # 200 expected each
    # without flip (digit-like data) color is one of five
    calls = applied(DSA(FULL, flip=False), range(1000))
    assert all(len(c) == 1 and c != ["flip"] for c in calls)
    assert 150 <= sum(c == ["color"] for c in calls) <= 250  # 200 expected


def test_mode_color_then_one_keeps_old_picks(applied):
    calls = applied(DSA(FULL, mode="color_then_one"), range(20))
    assert all(len(c) == 2 and c[0] == "color" for c in calls)
    # the picks of ddlab before the reference mode became the default (same seeds, same draws)
    old = ["flip", "rotate", "scale", "scale", "crop", "crop", "flip", "cutout", "rotate", "crop",
           "crop", "scale", "flip", "crop", "crop", "crop", "scale", "scale", "scale", "crop"]
    assert [c[1] for c in calls] == old
    calls = applied(DSA(FULL, flip=False, mode="color_then_one"), range(5))
    assert [c[1] for c in calls] == ["crop", "crop", "rotate", "rotate", "crop"]


def test_mode_all_applies_every_transform_in_order(applied):
    assert applied(DSA(FULL, mode="all"), range(3)) == [SINGLE] * 3
    assert applied(DSA("rotate_color", flip=False, mode="all"), [0]) == [["rotate", "color"]]


def test_unknown_mode_lists_modes():
    with pytest.raises(DDError) as e:
        DSA(FULL, mode="M")
    assert "'M'" in str(e.value) and all(m in str(e.value) for m in DSA_MODES)


@pytest.mark.parametrize("mode", DSA_MODES)
@pytest.mark.parametrize("strategy", SINGLE + [FULL])
def test_different_seeds_differ(strategy, mode):
    x = _batch()
    dsa = DSA(strategy, mode=mode)
    outs = [dsa(x, seed=s) for s in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_full_strategy_picks_one_transform_per_call():
    x = _batch()
    dsa = DSA(FULL)
    assert dsa.names == tuple(SINGLE) and dsa.mode == "one"
    # over many seeds, the output set differs: several distinct transforms are used
    assert len({dsa(x, seed=s).sum().item() for s in range(20)}) > 5


@pytest.mark.parametrize("mode", DSA_MODES)
def test_siamese_prefix_of_batch_matches(mode):
    # Per-image params: image i gets the same transform whatever the batch size.
    x = _batch(n=8)
    dsa = DSA(FULL, mode=mode)
    for seed in range(10):
        assert torch.equal(dsa(x, seed)[:3], dsa(x[:3], seed))


def test_batchwise_shares_params():
    x = _batch(n=4)
    same = x[:1].expand(4, -1, -1, -1)
    for strategy in SINGLE + [FULL]:
        y = DSA(strategy, batchwise=True)(same, seed=5)
        assert all(torch.allclose(y[0], y[i]) for i in range(1, 4))


@pytest.mark.parametrize("strategy", SINGLE)
def test_gradient_finite_and_nonzero(strategy):
    x = _batch().requires_grad_(True)
    DSA(strategy)(x, seed=7).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("strategy", ["crop", "scale", "rotate", "flip", "cutout", "color"])
def test_gradcheck_float64(strategy):
    x = _batch(n=2, c=2, h=6, w=6, dtype=torch.float64).requires_grad_(True)
    dsa = DSA(strategy)
    assert torch.autograd.gradcheck(lambda t: dsa(t, seed=3), (x,))


def test_gradcheck_all_transforms_chained():
    x = _batch(n=2, c=2, h=6, w=6, dtype=torch.float64).requires_grad_(True)
    dsa = DSA(FULL, mode="all")
    assert torch.autograd.gradcheck(lambda t: dsa(t, seed=3), (x,))


def test_none_is_identity():
    x = _batch()
    assert DSA("none")(x, seed=1) is x
    assert DSA("")(x, seed=1) is x


def test_flip_false_removes_flip():
    x = _batch()
    # strategy "flip" with flip=False is the identity (documented choice)
    assert torch.equal(DSA("flip", flip=False)(x, seed=5), x)
    assert "flip" not in DSA(FULL, flip=False).names
    # and flip=True really flips some images for some seed
    assert any(not torch.equal(DSA("flip")(x, seed=s), x) for s in range(3))


def test_flip_mirrors_images():
    x = _batch()
    y = DSA("flip")(x, seed=0)
    for i in range(len(x)):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))


def test_crop_is_integer_shift_with_zero_fill():
    x = torch.rand(4, 1, 16, 16) + 1.0  # strictly positive so zero fill is visible
    y = DSA("crop")(x, seed=11)
    for i in range(4):
        nz = y[i, 0] != 0
        vals = y[i, 0][nz]
        assert set(vals.tolist()) <= set(x[i, 0].flatten().tolist())
        assert nz.sum() >= (16 - 2) * (16 - 2)  # shift at most 2 = 16/8 pixels per axis


def test_cutout_zeroes_a_square():
    x = torch.rand(6, 3, 16, 16) + 1.0
    y = DSA("cutout")(x, seed=2)
    zeros = (y == 0).all(dim=1)  # (n, h, w)
    assert ((y == 0) | (y == x)).all()
    for i in range(6):
        assert 0 < zeros[i].sum() <= 8 * 8


def test_unknown_transform_raises():
    with pytest.raises(DDError) as e:
        DSA("color_jitter")
    assert "jitter" in str(e.value) and all(t in str(e.value) for t in DSA_TRANSFORMS)


def test_params_drawn_on_cpu_moved_to_input_dtype():
    x = _batch()
    a = DSA(FULL)(x, seed=9)
    b = DSA(FULL)(x.double(), seed=9)
    torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", DSA_MODES)
@pytest.mark.parametrize("batchwise", [False, True])
def test_stacked_batches_equal_one_call_per_model(mode, batchwise):
    # K models' batches in one call per transform give each model exactly its own call's images
    x = torch.randn(9, 5, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    dsa, seeds = DSA(FULL, mode=mode, batchwise=batchwise), list(range(100, 109))
    assert torch.equal(dsa.stacked(x, seeds), torch.stack([dsa(x[k], s) for k, s in enumerate(seeds)]))


@pytest.mark.cuda
@pytest.mark.parametrize("mode", DSA_MODES)
def test_cpu_and_gpu_apply_the_same_transforms(mode, applied):
    # Every transform is drawn (cutout and flip included), on CPU and GPU alike, and the gradient agrees.
    x = _batch(n=6, h=8, w=8, dtype=torch.float64)
    calls = applied(DSA(FULL, mode=mode), range(40), x=x)
    assert {t for c in calls for t in c} == set(SINGLE)
    for s in range(40):
        cpu, gpu = x.clone().requires_grad_(True), x.cuda().requires_grad_(True)
        a, b = DSA(FULL, mode=mode)(cpu, s), DSA(FULL, mode=mode)(gpu, s)
        torch.testing.assert_close(b.cpu(), a, atol=1e-10, rtol=1e-10)
        weights = torch.linspace(-1, 1, a.numel(), dtype=torch.float64).view_as(a)
        (a * weights).sum().backward()
        (b * weights.cuda()).sum().backward()
        torch.testing.assert_close(gpu.grad.cpu(), cpu.grad, atol=1e-10, rtol=1e-10)


def _cut_probability(size: int, side: int) -> list[float]:
    """Closed form: the centre c is uniform on 0..size (size + 1 values) for an even side, 0..size-1 for an
    odd one (the reference's rand_cutout); row r is cut iff c - side//2 <= r < c - side//2 + side."""
    centres = range(size + 1 - side % 2)
    return [sum(c - side // 2 <= r < c - side // 2 + side for c in centres) / len(centres) for r in range(size)]


@pytest.mark.parametrize("size", [32, 16, 18])  # sides 16 (cifar), 8 (digits) and 9 (odd)
def test_cutout_rows_and_columns_cut_as_often_as_the_reference(size):
    side = int(size * augment.CUTOUT + 0.5)
    expected = torch.tensor(_cut_probability(size, side), dtype=torch.float64)
    n = 200_000
    # the other axis 2 px wide: its side is 1, so each image is cut in exactly one column (or row) of it
    for shape, axis in (((n, 1, size, 2), 2), ((n, 1, 2, size), 1)):
        y = DSA("cutout")(torch.ones(shape), seed=size)
        cut = (y[:, 0] == 0).any(dim=axis).double().mean(0)  # per row (or column): the fraction of images cut there
        sigma = (expected * (1 - expected) / n).sqrt()
        assert ((cut - expected).abs() <= 5 * sigma + 1e-12).all(), (cut, expected)
    if side % 2 == 0:  # the centre reaches `size`: a band of only the last side/2 rows, which 0..size-1 never gives
        assert expected[-1] == pytest.approx((side // 2 + 1) / (size + 1))
        assert expected[-1] - (side // 2) / size > 10 * sigma[-1]  # the old range's figure is far outside the bound
