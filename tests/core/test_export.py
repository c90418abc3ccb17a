"""The distilled-set folder: bit-exact round trips, integrity checks, atomic saves, ZCA inversion."""

import hashlib
import json
import os
import stat

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import dd.export
from dd.errors import DDError
from dd.export import DATA_FILE, FORMAT_VERSION, META_FILE, DistilledSet, image_set

META_KEYS = {"format_version", "method", "dataset", "num_classes", "ipc", "image_size", "channels", "mean", "std",
             "zca", "model", "config", "sha256"}
MODEL = {"name": "convnet", "width": 8}


def _digit_indices(data, ipc=2):
    return torch.cat([data.indices_of_class(c)[:ipc] for c in range(data.num_classes)])


def _reference_pixels(indices) -> torch.Tensor:
    """digits pixels rebuilt from scikit-learn: 8x8 / 16, bilinear to 16x16."""
    from sklearn.datasets import load_digits

    raw = torch.tensor(load_digits().images[np.asarray(indices)], dtype=torch.float32).unsqueeze(1) / 16.0
    return F.interpolate(raw, size=(16, 16), mode="bilinear", align_corners=False)


def _make_set(data, *, labels=None, lr=None, ipc=2):
    idx = _digit_indices(data, ipc)
    labels = data.train_y[idx] if labels is None else labels
    return image_set(data.train_x[idx], labels, data, lr=lr, method="random", ipc=ipc, model=MODEL,
                     config={"ipc": ipc, "nested": {"a": [1, 2]}}, evaluation={"mean": 0.5},
                     extra_meta={"train_indices": idx.tolist()})


@pytest.fixture
def saved(digits_data, tmp_path):
    ds = _make_set(digits_data, lr=torch.tensor(0.0123))
    path = ds.save(tmp_path / "set")
    return ds, path


def _rewrite(path, tensors=None, meta=None, recompute_sha=True):
    """Edit a saved set in place the way a person with a text editor / python would."""
    if tensors is not None:
        save_file(tensors, str(path / DATA_FILE))
    m = json.loads((path / META_FILE).read_text()) if meta is None else meta
    if recompute_sha:
        m["sha256"] = hashlib.sha256((path / DATA_FILE).read_bytes()).hexdigest()
    (path / META_FILE).write_text(json.dumps(m))


# --- round trip --------------------------------------------------------------------------


def test_round_trip_bit_exact(saved, digits_data):
    ds, path = saved
    assert sorted(os.listdir(path)) == [DATA_FILE, META_FILE]
    back = dd.export.load(path)
    assert set(back.tensors) == {"images", "images_pixel", "labels", "lr"}
    for k, v in ds.tensors.items():
        w = back.tensors[k]
        assert w.dtype == v.dtype and w.shape == v.shape
        assert torch.equal(w, v), k
    assert back.labels.dtype == torch.int64
    assert back.lr.tolist() == [pytest.approx(0.0123)] and back.lr.shape == (1,)
    assert META_KEYS <= set(back.meta)
    m = back.meta
    assert m["format_version"] == FORMAT_VERSION and m["method"] == "random" and m["dataset"] == "digits"
    assert m["num_classes"] == 10 and m["ipc"] == 2 and m["image_size"] == [16, 16] and m["channels"] == 1
    assert m["mean"] == digits_data.mean and m["std"] == digits_data.std and m["zca"] is False
    assert m["model"] == MODEL and m["config"] == {"ipc": 2, "nested": {"a": [1, 2]}}
    assert m["sha256"] == hashlib.sha256((path / DATA_FILE).read_bytes()).hexdigest()
    assert m["tensors"]["images"] == {"shape": [20, 1, 16, 16], "dtype": "float32"}
    assert back.kind == "image" and torch.equal(back.hard_labels(), ds.labels)
    x, y = back.torch_dataset()[3]
    assert torch.equal(x, ds.images[3]) and y == ds.labels[3]


def test_pixels_in_unit_range_and_match_to_pixels(saved, digits_data):
    ds, path = saved
    back = dd.export.load(path)
    px = back.pixels()
    assert px.min() >= 0 and px.max() <= 1
    assert torch.equal(px, digits_data.to_pixels(back.images))
    # and they are the dataset's actual pixels
    torch.testing.assert_close(px, _reference_pixels(back.meta["train_indices"]), atol=1e-5, rtol=0)


def test_save_creates_parents_and_files_readable_like_normal_files(digits_data, tmp_path):
    path = _make_set(digits_data).save(tmp_path / "a" / "b" / "set")
    umask = os.umask(0)
    os.umask(umask)
    ref = tmp_path / "ref.txt"
    ref.write_text("x")  # an ordinary file: its mode follows the umask
    for p in (path / DATA_FILE, path / META_FILE):
        assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(ref.stat().st_mode), p
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask


# --- integrity ---------------------------------------------------------------------------


def test_flipped_byte_detected(saved):
    _, path = saved
    buf = bytearray((path / DATA_FILE).read_bytes())
    buf[len(buf) // 2] ^= 0x01
    (path / DATA_FILE).write_bytes(bytes(buf))
    with pytest.raises(DDError, match="sha256") as info:
        dd.export.load(path)
    assert "corrupt" in str(info.value)


def test_truncated_file_detected(saved):
    _, path = saved
    data = (path / DATA_FILE).read_bytes()
    (path / DATA_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(DDError, match="sha256"):
        dd.export.load(path)
    # even with a matching checksum, a cut-off file is refused cleanly
    _rewrite(path)
    with pytest.raises(DDError, match="safetensors"):
        dd.export.load(path)


@pytest.mark.parametrize("version", [99, FORMAT_VERSION + 1, 0, -1, "1", None])
def test_unsupported_format_version(saved, version):
    _, path = saved
    meta = json.loads((path / META_FILE).read_text())
    if version is None:
        del meta["format_version"]
    else:
        meta["format_version"] = version
    _rewrite(path, meta=meta)
    with pytest.raises(DDError, match="format_version"):
        dd.export.load(path)


def test_labels_out_of_range(saved):
    _, path = saved
    tensors = load_file(str(path / DATA_FILE))
    tensors["labels"][0] = 10
    _rewrite(path, tensors)
    with pytest.raises(DDError, match=r"0\.\.9"):
        dd.export.load(path)
    tensors["labels"][0] = -1
    _rewrite(path, tensors)
    with pytest.raises(DDError, match="outside"):
        dd.export.load(path)


def test_shape_mismatches(saved):
    _, path = saved
    tensors = load_file(str(path / DATA_FILE))
    _rewrite(path, {**tensors, "labels": tensors["labels"][:-1].clone()})
    with pytest.raises(DDError, match="labels"):
        dd.export.load(path)
    _rewrite(path, {**tensors, "images": tensors["images"][:, :, :8].clone()})
    with pytest.raises(DDError, match="shape"):
        dd.export.load(path)
    _rewrite(path, {k: v for k, v in tensors.items() if k != "images"})
    with pytest.raises(DDError, match="images"):
        dd.export.load(path)


def test_missing_folder_and_files(tmp_path, saved):
    with pytest.raises(DDError, match="missing"):
        dd.export.load(tmp_path / "nope")
    _, path = saved
    (path / META_FILE).unlink()
    with pytest.raises(DDError, match=META_FILE):
        dd.export.load(path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "null", "\"meta\""])
def test_meta_not_a_json_object(saved, text):
    _, path = saved
    (path / META_FILE).write_text(text)
    with pytest.raises(DDError, match="JSON"):
        dd.export.load(path)


# --- atomic save --------------------------------------------------------------------------


def test_save_over_existing_replaces_whole(digits_data, tmp_path):
    path = tmp_path / "set"
    _make_set(digits_data, ipc=1).save(path)
    (path / "stale.txt").write_text("from an older run")
    new = _make_set(digits_data, ipc=3)
    new.save(path)
    assert sorted(os.listdir(path)) == [DATA_FILE, META_FILE]
    back = dd.export.load(path)
    assert back.meta["ipc"] == 3 and len(back.images) == 30 and torch.equal(back.images, new.images)
    assert os.listdir(tmp_path) == ["set"]  # no temp or .old siblings


def test_nan_refused_and_nothing_written(digits_data, tmp_path):
    ds = _make_set(digits_data)
    ds.tensors["images"] = ds.tensors["images"].clone()
    ds.tensors["images"][0, 0, 0, 0] = float("nan")
    with pytest.raises(DDError, match="images"):
        ds.save(tmp_path / "set")
    assert os.listdir(tmp_path) == []
    # an existing folder survives a refused save untouched
    good = _make_set(digits_data)
    good.save(tmp_path / "set")
    before = (tmp_path / "set" / DATA_FILE).read_bytes()
    inf_set = _make_set(digits_data, lr=torch.tensor(float("inf")))
    with pytest.raises(DDError, match="lr"):
        inf_set.save(tmp_path / "set")
    assert (tmp_path / "set" / DATA_FILE).read_bytes() == before
    assert os.listdir(tmp_path) == ["set"]


def test_failed_write_leaves_no_folder(digits_data, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(dd.export, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        _make_set(digits_data).save(tmp_path / "set")
    assert os.listdir(tmp_path) == []


# --- soft labels and ZCA ----------------------------------------------------------------------


def test_soft_labels_round_trip(digits_data, tmp_path):
    g = torch.Generator().manual_seed(0)
    soft = torch.softmax(torch.randn(20, 10, generator=g), 1)
    ds = _make_set(digits_data, labels=soft)
    back = dd.export.load(ds.save(tmp_path / "set"))
    assert back.labels.dtype == torch.float32 and back.labels.shape == (20, 10)
    assert torch.equal(back.labels, soft)
    assert torch.equal(back.hard_labels(), soft.argmax(1))


def test_soft_labels_wrong_width_refused(digits_data, tmp_path):
    ds = _make_set(digits_data, labels=torch.full((20, 7), 1 / 7))
    with pytest.raises(DDError, match="7 columns"):
        dd.export.load(ds.save(tmp_path / "set"))


def test_zca_stored_and_inverted(digits_zca_data, tmp_path):
    data = digits_zca_data
    ds = _make_set(data, ipc=3)
    back = dd.export.load(ds.save(tmp_path / "set"))
    assert back.meta["zca"] is True
    state = data.zca.state()
    assert set(state) == {"zca_matrix", "zca_mean", "zca_inverse"}
    for k, v in state.items():
        assert torch.equal(back.tensors[k], v), k
    # the whitened images are not pixels, but images_pixel are the original pixels
    ref = _reference_pixels(back.meta["train_indices"])
    assert (back.images - (ref - data.mean[0]) / data.std[0]).abs().max() > 0.5
    torch.testing.assert_close(back.pixels(), ref, atol=1e-4, rtol=0)
    # the stored transform alone undoes the whitening: flatten(x) @ inverse + mean, then de-normalise
    flat = back.images.reshape(len(back.images), -1) @ back.tensors["zca_inverse"] + back.tensors["zca_mean"]
    own = (flat.reshape(back.images.shape) * back.meta["std"][0] + back.meta["mean"][0]).clamp(0, 1)
    torch.testing.assert_close(own, ref, atol=1e-4, rtol=0)
    # and the matrices are inverses of each other
    eye = back.tensors["zca_matrix"].double() @ back.tensors["zca_inverse"].double()
    torch.testing.assert_close(eye, torch.eye(eye.shape[0], dtype=torch.float64), atol=1e-3, rtol=0)


def test_distilled_set_direct_construction(tmp_path):
    ds = DistilledSet({"images": torch.zeros(2, 1, 4, 4), "labels": torch.tensor([0, 1])},
                      {"num_classes": 2, "channels": 1, "image_size": [4, 4]})
    back = dd.export.load(ds.save(tmp_path / "s"))
    assert back.meta["num_classes"] == 2 and torch.equal(back.labels, torch.tensor([0, 1]))
