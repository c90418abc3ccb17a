"""Dataset loaders, offline: every fixture is written into tmp_path."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from dd.data import IMAGE_DATASETS, ZCA, load_image_dataset
from dd.data.images import STATS
from dd.errors import DDError


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")


@pytest.fixture(scope="module")
def digits_zca():
    return load_image_dataset("digits", zca=True, zca_eps=0.1)


# --- digits -------------------------------------------------------------------


def test_digits_shapes_and_labels(digits):
    """dd reads scikit-learn's digits file itself (importing scikit-learn costs seconds): the images and labels
    are scikit-learn's, its 8x8 images upsampled bilinearly to 16x16."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    sk = load_digits()
    target = torch.as_tensor(sk.target, dtype=torch.int64)
    pixels = F.interpolate(torch.tensor(sk.images, dtype=torch.float32).unsqueeze(1) / 16.0, size=(16, 16),
                           mode="bilinear", align_corners=False)
    torch.testing.assert_close(digits.to_pixels(digits.train_x), pixels[:1500], atol=1e-5, rtol=0)
    torch.testing.assert_close(digits.to_pixels(digits.test_x), pixels[1500:], atol=1e-5, rtol=0)
    assert digits.train_x.shape == (1500, 1, 16, 16) and digits.test_x.shape == (297, 1, 16, 16)
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    assert torch.equal(digits.train_y, target[:1500]) and torch.equal(digits.test_y, target[1500:])
    assert digits.num_classes == 10 and digits.class_names == [str(i) for i in range(10)]
    assert digits.channels == 1 and digits.image_size == (16, 16) and digits.flip is False
    assert digits.zca is None


def test_digits_normalised(digits):
    assert abs(digits.train_x.mean().item()) < 1e-4
    assert abs(digits.train_x.std().item() - 1.0) < 1e-3
    assert 0.2 < digits.mean[0] < 0.4 and 0.2 < digits.std[0] < 0.45


def test_digits_pixel_round_trip(digits):
    px = digits.to_pixels(digits.train_x[:50])
    assert px.min() >= 0 and px.max() <= 1
    torch.testing.assert_close(digits.from_pixels(px), digits.train_x[:50], atol=1e-5, rtol=0)


def test_indices_of_class(digits):
    idx = digits.indices_of_class(3)
    assert len(idx) > 0 and bool((digits.train_y[idx] == 3).all())
    assert len(idx) == int((digits.train_y == 3).sum())
    with pytest.raises(DDError):
        digits.indices_of_class(10)


def test_resize_and_train_limit():
    d = load_image_dataset("digits", image_size=8, train_limit=100)
    assert d.train_x.shape == (100, 1, 8, 8) and d.test_x.shape == (297, 1, 8, 8)
    assert d.train_y.shape == (100,)


# --- ZCA ----------------------------------------------------------------------


def _raw(d, x):
    """Undo mean/std normalisation only: the dataset's [0, 1] pixels."""
    return x * torch.tensor(d.std).view(1, -1, 1, 1) + torch.tensor(d.mean).view(1, -1, 1, 1)


def test_zca_matches_kornia(digits, digits_zca):
    from kornia.enhance import ZCAWhitening

    # the reference fits on raw [0, 1] pixels: no mean/std step, so the recorded normalisation is identity
    assert digits_zca.mean == [0.0] and digits_zca.std == [1.0]
    train, test = _raw(digits, digits.train_x), _raw(digits, digits.test_x)
    k = ZCAWhitening(eps=0.1, compute_inv=True).fit(train)
    torch.testing.assert_close(digits_zca.train_x, k(train), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(digits_zca.test_x, k(test), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(digits_zca.zca.apply(test), k(test), atol=1e-5, rtol=1e-5)


def test_zca_invert_round_trip(digits, digits_zca):
    z = digits_zca.zca
    torch.testing.assert_close(z.invert(digits_zca.train_x), _raw(digits, digits.train_x), atol=1e-4, rtol=1e-4)
    # to_pixels undoes ZCA (the normalisation is the identity); from_pixels redoes it
    px = digits_zca.to_pixels(digits_zca.test_x[:20])
    torch.testing.assert_close(px, digits.to_pixels(digits.test_x[:20]), atol=1e-4, rtol=0)
    torch.testing.assert_close(digits_zca.from_pixels(px), digits_zca.test_x[:20], atol=1e-3, rtol=0)


def test_zca_on_raw_pixels_of_random_images(tmp_path):
    from kornia.enhance import ZCAWhitening

    rng = np.random.default_rng(3)
    train, test = _write_cifar(tmp_path, "cifar10", rng, n_train=40, n_test=6)
    d = load_image_dataset("cifar10", root=str(tmp_path), source="folder", zca=True, image_size=8)
    # the same resize the loader does, on the uint8 -> [0, 1] pixels
    raw_train = torch.nn.functional.interpolate(train, size=(8, 8), mode="bilinear", align_corners=False)
    raw_test = torch.nn.functional.interpolate(test, size=(8, 8), mode="bilinear", align_corners=False)
    k = ZCAWhitening(eps=0.1).fit(raw_train)
    torch.testing.assert_close(d.train_x, k(raw_train), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d.test_x, k(raw_test), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d.to_pixels(d.train_x), raw_train, atol=1e-4, rtol=0)
    assert d.mean == [0.0] * 3 and d.std == [1.0] * 3
    # not what whitening the mean/std-normalised pixels gives (ddlab's earlier recipe)
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in STATS["cifar10"])
    normed = (raw_train - m) / s
    assert (d.train_x - ZCAWhitening(eps=0.1).fit(normed)(normed)).abs().max() > 0.1


def test_zca_whitened_covariance():
    # Well-conditioned data: whitened covariance is U diag(S/(S+eps)) U^T, ~identity for small eps.
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=g)
    x = (torch.randn(4000, 12, generator=g, dtype=torch.float64) @ mix.double()).view(4000, 3, 2, 2)
    flat = x.view(len(x), -1)
    cov = torch.cov(flat.T)
    s, u = torch.linalg.eigh(cov)
    for eps in (1e-6, 0.1):
        w = ZCA.fit(x, eps=eps).apply(x).view(len(x), -1)
        expected = u @ torch.diag(s / (s + eps)) @ u.T
        torch.testing.assert_close(torch.cov(w.T), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        torch.cov(ZCA.fit(x, eps=1e-9).apply(x).view(len(x), -1).T),
        torch.eye(12, dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )


def test_zca_digits_covariance_bounded(digits_zca):
    # Eigenvalues of the whitened covariance are S/(S+eps): in [0, 1), the large ones near 1.
    w = digits_zca.train_x.view(1500, -1).double()
    ev = torch.linalg.eigvalsh(torch.cov(w.T))
    # (raw pixels vary less than normalised ones, so the top S/(S+eps) is about 0.95, not nearer 1)
    assert ev.max() < 1.0 + 1e-4 and ev.min() > -1e-4 and ev.max() > 0.9


def test_zca_state_round_trip(digits, digits_zca):
    st = digits_zca.zca.state()
    assert set(st) == {"zca_matrix", "zca_mean", "zca_inverse"}
    assert st["zca_matrix"].shape == (256, 256) and st["zca_mean"].shape == (256,)
    z2 = ZCA.from_state(st)
    assert torch.equal(z2.apply(digits.test_x), digits_zca.zca.apply(digits.test_x))
    z3 = ZCA.from_state({k: v for k, v in st.items() if k != "zca_inverse"})  # inverse recomputed
    torch.testing.assert_close(z3.invert(digits_zca.test_x), _raw(digits, digits.test_x), atol=1e-4, rtol=1e-4)
    # any dtype of the input
    assert z2.apply(digits.test_x.double()).dtype == torch.float64


# --- IDX ----------------------------------------------------------------------


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_idx_folder(folder, n_train=20, n_test=10, gz=("train-labels-idx1-ubyte",)):
    rng = np.random.default_rng(0)
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    os.makedirs(folder, exist_ok=True)
    for name, arr in data.items():
        raw = _idx_bytes(arr)
        if name in gz:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(raw)
    return data


def test_idx_loads(tmp_path):
    data = _write_idx_folder(tmp_path)
    d = load_image_dataset("fashion_mnist", root=str(tmp_path), source="idx")
    assert d.train_x.shape == (20, 1, 28, 28) and d.test_x.shape == (10, 1, 28, 28)
    assert d.train_y.tolist() == data["train-labels-idx1-ubyte"].tolist()
    assert d.test_y.tolist() == data["t10k-labels-idx1-ubyte"].tolist()
    expected = torch.as_tensor(data["train-images-idx3-ubyte"]).float()[:, None] / 255
    torch.testing.assert_close(d.to_pixels(d.train_x), expected, atol=1e-6, rtol=0)
    assert d.mean == [0.2861] and d.std == [0.3530] and d.flip is True  # clothes flip (the DC reference code)
    assert d.class_names[0] == "T-shirt/top" and d.num_classes == 10


def test_idx_truncated_file(tmp_path):
    _write_idx_folder(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DDError, match="t10k-images-idx3-ubyte"):
        load_image_dataset("mnist", root=str(tmp_path), source="idx")


def test_idx_bad_gzip(tmp_path):
    _write_idx_folder(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DDError, match="train-labels-idx1-ubyte.gz"):
        load_image_dataset("mnist", root=str(tmp_path), source="idx")


def test_idx_missing(tmp_path):
    with pytest.raises(DDError, match="does not exist") as e:
        load_image_dataset("fashion_mnist", root=str(tmp_path / "nope"), source="idx")
    assert "/usr/share/datasets/fashion-mnist" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DDError, match="train-images-idx3-ubyte"):
        load_image_dataset("mnist", root=str(tmp_path / "empty"), source="idx")


def test_torchvision_reads_mnist_raw_folder(tmp_path):
    # torchvision checks only that MNIST's raw files exist, so the IDX fixture serves it too
    data = _write_idx_folder(tmp_path / "FashionMNIST" / "raw", gz=())
    d = load_image_dataset("fashion_mnist", root=str(tmp_path))
    assert d.train_x.shape == (20, 1, 28, 28) and d.test_y.tolist() == data["t10k-labels-idx1-ubyte"].tolist()
    assert (
        d.class_names
        == load_image_dataset(
            "fashion_mnist", root=str(tmp_path / "FashionMNIST" / "raw"), source="idx"
        ).class_names
    )


# --- CIFAR python batches -----------------------------------------------------


def _write_cifar(root, name, rng, n_train, n_test):
    """Random CIFAR python batches under root; returns the train and test pixels in [0, 1]."""
    sub, key, files = (("cifar-10-batches-py", b"labels", ("data_batch_1", "test_batch")) if name == "cifar10"
                       else ("cifar-100-python", b"fine_labels", ("train", "test")))
    folder = root / sub
    folder.mkdir()
    pixels = []
    for fname, n in zip(files, (n_train, n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / fname, "wb") as f:
            pickle.dump({b"data": data, key: [i % 10 for i in range(n)]}, f)
        pixels.append(torch.as_tensor(data).view(n, 3, 32, 32).float() / 255)
    return pixels



def test_cifar10_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    train = {
        b"data": rng.integers(0, 256, (12, 3072), dtype=np.uint8),
        b"labels": [i % 10 for i in range(12)],
    }
    test = {b"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8), b"labels": [9, 8, 7, 6, 5]}
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    for fname, obj in (
        ("data_batch_1", train),
        ("test_batch", test),
        ("batches.meta", {b"label_names": names}),
    ):
        with open(folder / fname, "wb") as f:
            pickle.dump(obj, f)
    d = load_image_dataset("cifar10", root=str(tmp_path), source="folder")
    assert d.train_x.shape == (12, 3, 32, 32) and d.test_x.shape == (5, 3, 32, 32)
    assert d.test_y.tolist() == [9, 8, 7, 6, 5] and d.class_names[1] == "automobile"
    assert d.flip is True and d.channels == 3
    expected = torch.as_tensor(train[b"data"]).view(12, 3, 32, 32).float() / 255
    torch.testing.assert_close(d.to_pixels(d.train_x), expected, atol=1e-6, rtol=0)
    # root may also be the batches folder itself
    assert load_image_dataset("cifar10", root=str(folder), source="folder").train_x.shape[0] == 12


def test_cifar100_folder_and_corrupt(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = {b"data": np.zeros((4, 3072), dtype=np.uint8), b"fine_labels": [0, 99, 5, 5]}
    for fname in ("train", "test"):
        with open(folder / fname, "wb") as f:
            pickle.dump(data, f)
    d = load_image_dataset("cifar100", root=str(tmp_path), source="folder")
    assert d.num_classes == 100 and d.train_y.tolist() == [0, 99, 5, 5]
    (folder / "test").write_bytes(b"not a pickle")
    with pytest.raises(DDError, match="test"):
        load_image_dataset("cifar100", root=str(tmp_path), source="folder")


def test_stats_of_another_dataset(tmp_path):
    # the reference code normalises CIFAR-100 with CIFAR-10's statistics
    train, _ = _write_cifar(tmp_path, "cifar100", np.random.default_rng(4), n_train=6, n_test=3)
    own = load_image_dataset("cifar100", root=str(tmp_path), source="folder")
    d = load_image_dataset("cifar100", root=str(tmp_path), source="folder", stats="cifar10")
    assert (own.mean, own.std) == STATS["cifar100"] and (d.mean, d.std) == STATS["cifar10"]
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in STATS["cifar10"])
    torch.testing.assert_close(d.train_x, (train - m) / s, atol=1e-6, rtol=0)
    torch.testing.assert_close(d.to_pixels(d.train_x), train, atol=1e-6, rtol=0)
    # with zca there is no mean/std step, so stats has nothing to change
    z = load_image_dataset("cifar100", root=str(tmp_path), source="folder", stats="cifar10", zca=True, image_size=4)
    assert z.mean == [0.0] * 3


def test_stats_errors():
    with pytest.raises(DDError) as e:
        load_image_dataset("digits", stats="cifar1000")
    assert "cifar1000" in str(e.value) and all(n in str(e.value) for n in STATS)
    with pytest.raises(DDError, match="3 channel"):
        load_image_dataset("digits", stats="cifar10")
    assert load_image_dataset("digits", stats="mnist", train_limit=10).mean == [0.1307]


def test_dataset_of_uses_recorded_stats():
    from dd.image.exported import dataset_of

    meta = {"dataset": "digits", "zca": False, "mean": [0.1307], "config": {"dataset": {"stats": "mnist"}}}
    assert dataset_of(meta, None).std == [0.3081]
    with pytest.raises(DDError, match="mean"):
        dataset_of(dict(meta, config={"dataset": {}}), None)  # digits' own statistics differ


# --- Tiny ImageNet ------------------------------------------------------------


def test_tiny_imagenet_layout(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n"
    )
    for c, w in enumerate(wnids):
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (40 * c + 10 * i, 0, 255)).save(d / f"{w}_{i}.JPEG")
    lines = []
    for i, c in enumerate([1, 0, 1]):
        Image.new("L", (64, 64), 128).save(
            root / "val" / "images" / f"val_{i}.JPEG"
        )  # greyscale is converted
        lines.append(f"val_{i}.JPEG\t{wnids[c]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    d = load_image_dataset("tiny_imagenet", root=str(tmp_path))
    assert d.train_x.shape == (6, 3, 64, 64) and d.test_x.shape == (3, 3, 64, 64)
    assert d.train_y.tolist() == [0, 0, 0, 1, 1, 1] and d.test_y.tolist() == [1, 0, 1]
    assert d.class_names == ["goldfish", "European fire salamander"] and d.num_classes == 2
    px = d.to_pixels(d.train_x)
    assert abs(px[0, 2].mean().item() - 1.0) < 0.02  # blue channel saved as 255
    assert load_image_dataset("tiny_imagenet", root=str(tmp_path), train_limit=2).train_x.shape[0] == 2


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(DDError, match="wnids.txt"):
        load_image_dataset("tiny_imagenet", root=str(tmp_path))


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "svhn", "cifar10", "cifar100"])
def test_torchvision_missing_root(tmp_path, name):
    root = str(tmp_path / "absent")
    with pytest.raises(DDError) as e:
        load_image_dataset(name, root=root, download=False)
    msg = str(e.value)
    assert root in msg and "dataset.download=true" in msg and "\n" not in msg


def test_unknown_dataset_lists_names():
    with pytest.raises(DDError) as e:
        load_image_dataset("imagenet1k")
    msg = str(e.value)
    assert "imagenet1k" in msg and all(n in msg for n in IMAGE_DATASETS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "digits", "source": "lmdb"},
        {"name": "cifar10", "source": "idx", "root": "x"},
        {"name": "mnist"},  # needs a root
        {"name": "digits", "zca_eps": 0.0},
        {"name": "digits", "train_limit": 0},
    ],
)
def test_bad_options(kwargs):
    with pytest.raises(DDError):
        load_image_dataset(**kwargs)
