"""Image datasets as normalised in-memory tensors.

Every loader returns raw pixels in [0, 1] as (N, C, H, W) float32;
``load_image_dataset`` then resizes, truncates and either mean/std-normalises
or (``zca=True``) ZCA-whitens the raw pixels, in one place so all datasets
follow the same recipe.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import Tensor

from dd import seeds
from dd.data.zca import ZCA
from dd.errors import DDError

IMAGE_DATASETS: tuple[str, ...] = (
    "digits",
    "mnist",
    "fashion_mnist",
    "svhn",
    "cifar10",
    "cifar100",
    "tiny_imagenet",
)
SOURCES: tuple[str, ...] = ("torchvision", "idx", "folder")

# Published per-channel statistics; digits computes its own from the train split.
STATS: dict[str, tuple[list[float], list[float]]] = {
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2861], [0.3530]),
    "svhn": ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
    "tiny_imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}
# Horizontal flips change the meaning of digits (MNIST, SVHN, digits), so those never flip; clothes
# (FashionMNIST) keep flip, as in the Dataset Condensation reference code.
FLIP = {"cifar10", "cifar100", "tiny_imagenet", "fashion_mnist"}

# Same names torchvision reports, so both sources of a dataset agree.
MNIST_CLASSES = [
    f"{i} - {w}" for i, w in enumerate("zero one two three four five six seven eight nine".split())
]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DEBIAN_FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


@dataclass
class ImageDatasetConfig:
    name: str = MISSING
    kind: str = "image"  # an image dataset: dd.pipeline runs it with dd.image.kind
    root: str | None = None
    download: bool = False
    source: str = "torchvision"  # torchvision | idx | folder
    zca: bool = False  # whiten the raw [0, 1] pixels (no mean/std step), as the reference code
    zca_eps: float = 0.1
    # mean/std used without zca: null = the dataset's own, or another dataset's name (e.g. cifar10)
    stats: str | None = None
    image_size: int | None = None
    train_limit: int | None = None
    # training images per class held out of the train split (class-balanced, the same for every seed: the
    # stream ("holdout_split", 0)); methods score selection rounds on them with method.select=val
    holdout_per_class: int = 0


@dataclass
class ImageDataset:
    name: str
    train_x: Tensor  # (N, C, H, W) float32: normalised, or whitened raw pixels if zca
    train_y: Tensor  # (N,) int64
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    class_names: list[str]
    mean: list[float]  # per channel, the normalisation used (0 and 1 with zca: none)
    std: list[float]
    zca: ZCA | None
    flip: bool  # whether horizontal flip is a label-preserving augmentation
    # dataset.holdout_per_class > 0: the training images held out of train_x/train_y (class-balanced, in
    # dataset order), which methods may score on (method.select=val) but never train on; else None
    val_x: Tensor | None = None
    val_y: Tensor | None = None

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return mean, std

    def to_pixels(self, x: Tensor) -> Tensor:
        """Model space -> pixels in [0, 1] (undo ZCA, then normalisation)."""
        if self.zca is not None:
            x = self.zca.invert(x)
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0.0, 1.0)

    def from_pixels(self, x: Tensor) -> Tensor:
        """Pixels in [0, 1] -> model space (normalise, then ZCA)."""
        mean, std = self._stats(x)
        x = (x - mean) / std
        if self.zca is not None:
            x = self.zca.apply(x)
        return x

    def val_view(self) -> ImageDataset:
        """This dataset with the held-out split in the place of the test split, so that an evaluation of
        fresh models (dd.image.evaluate.evaluate_set) scores on the held-out images instead."""
        if self.val_x is None:
            raise DDError(f"{self.name} was loaded without held-out training images; set dataset.holdout_per_class")
        return dataclasses.replace(self, test_x=self.val_x, test_y=self.val_y)

    def indices_of_class(self, c: int) -> Tensor:
        """Indices into the train split whose label is ``c``."""
        if not 0 <= int(c) < self.num_classes:
            raise DDError(f"class {c} is out of range for {self.name}; use 0..{self.num_classes - 1}")
        return torch.nonzero(self.train_y == int(c)).flatten()


@dataclass
class _Raw:
    """What a loader returns: pixels in [0, 1] plus labels and names."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: list[str]


def load_image_dataset(
    name: str,
    root: str | None = None,
    download: bool = False,
    source: str = "torchvision",
    zca: bool = False,
    zca_eps: float = 0.1,
    image_size: int | None = None,
    train_limit: int | None = None,
    stats: str | None = None,
    holdout_per_class: int = 0,
) -> ImageDataset:
    """Load ``name`` (one of IMAGE_DATASETS) into CPU tensors.

    ``source``: "torchvision" (default; for ``digits`` it means the copy bundled
    with scikit-learn, for ``tiny_imagenet`` the standard folder layout),
    "idx" (mnist / fashion_mnist: raw IDX files in ``root``) or "folder"
    (cifar10 / cifar100 / tiny_imagenet: the official files parsed directly).

    ``zca``: whiten the raw [0, 1] pixels (no mean/std step), fitted on the train
    split. Otherwise pixels are mean/std-normalised with ``stats``: None for the
    dataset's own statistics, or the name of another dataset in STATS (the
    reference code normalises CIFAR-100 with CIFAR-10's). ``stats`` is unused with ``zca``.

    ``holdout_per_class``: move this many training images of every class (after ``train_limit``; the same
    ones for every run: stream ("holdout_split", 0)) out of the train split into ``val_x``/``val_y``. The
    ZCA is fitted without them; the mean/std are the train split's as before (like ``train_limit``, the
    holdout does not move them).
    """
    _check_options(name, root, source, zca_eps, image_size, train_limit, stats)
    if int(holdout_per_class) < 0:
        raise DDError(f"dataset.holdout_per_class={holdout_per_class} is not allowed; give the training images "
                      "per class to hold out (0: none)")
    raw = _load_raw(name, root, download, source, train_limit)

    if image_size is not None:
        raw.train_x, raw.test_x = _resize(raw.train_x, image_size), _resize(raw.test_x, image_size)

    channels = int(raw.train_x.shape[1])
    if zca:
        # The reference whitens raw [0, 1] pixels with no mean/std step; recording the
        # identity normalisation keeps to_pixels/from_pixels and exports consistent.
        mean, std = [0.0] * channels, [1.0] * channels
    elif name == "digits" and stats is None:
        # Computed on the full train split so train_limit does not move the statistics.
        mean = raw.train_x.mean(dim=(0, 2, 3)).tolist()
        std = raw.train_x.std(dim=(0, 2, 3)).tolist()
    else:
        mean, std = STATS[name if stats is None else stats]
        if len(mean) != channels:
            raise DDError(
                f"dataset.stats={stats!r} has {len(mean)} channel(s) but {name} images have {channels}"
            )
    if train_limit is not None:
        raw.train_x, raw.train_y = raw.train_x[:train_limit], raw.train_y[:train_limit]
    val_x = val_y = None
    if holdout_per_class:
        held = holdout_indices(raw.train_y, int(holdout_per_class), len(raw.class_names), name)
        kept = torch.ones(len(raw.train_y), dtype=torch.bool)
        kept[held] = False
        val_x, val_y = raw.train_x[held], raw.train_y[held]
        raw.train_x, raw.train_y = raw.train_x[kept], raw.train_y[kept]

    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    train_x = ((raw.train_x - m) / s).contiguous()
    test_x = ((raw.test_x - m) / s).contiguous()
    val_x = None if val_x is None else ((val_x - m) / s).contiguous()

    fitted = None
    if zca:
        # Fitted on the train split only (held-out images excluded), applied to every split.
        fitted = ZCA.fit(train_x, eps=float(zca_eps))
        train_x, test_x = fitted.apply(train_x), fitted.apply(test_x)
        val_x = None if val_x is None else fitted.apply(val_x)

    return ImageDataset(
        name=name,
        train_x=train_x,
        train_y=raw.train_y.long(),
        test_x=test_x,
        test_y=raw.test_y.long(),
        num_classes=len(raw.class_names),
        class_names=list(raw.class_names),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        zca=fitted,
        flip=name in FLIP,
        val_x=val_x,
        val_y=None if val_y is None else val_y.long(),
    )


def holdout_indices(train_y: Tensor, per_class: int, num_classes: int, name: str) -> Tensor:
    """Sorted indices of `per_class` training images of every class, drawn without replacement from the
    stream ("holdout_split", 0): the same images whatever the run's seed, so one expert buffer serves them all."""
    gen = seeds.generator("holdout_split", 0)
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(train_y == c).flatten()
        if len(idx) <= per_class:
            raise DDError(f"dataset.holdout_per_class={per_class} is not allowed: class {c} of {name} has only "
                          f"{len(idx)} training images (after train_limit); hold out fewer than {len(idx)}")
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def _check_options(name, root, source, zca_eps, image_size, train_limit, stats) -> None:
    if name not in IMAGE_DATASETS:
        raise DDError(f"dataset '{name}' is unknown; choose one of: {', '.join(IMAGE_DATASETS)}")
    if stats is not None and stats not in STATS:
        raise DDError(f"dataset.stats={stats!r} is unknown; use null or one of: {', '.join(STATS)}")
    if source not in SOURCES:
        raise DDError(f"dataset.source '{source}' is unknown; choose one of: {', '.join(SOURCES)}")
    if source == "idx" and name not in ("mnist", "fashion_mnist"):
        raise DDError(f"dataset.source=idx only works for mnist and fashion_mnist, not '{name}'")
    if source == "folder" and name not in ("cifar10", "cifar100", "tiny_imagenet"):
        raise DDError(
            f"dataset.source=folder only works for cifar10, cifar100 and tiny_imagenet, not '{name}'"
        )
    if name != "digits" and root is None and not (name == "fashion_mnist" and source == "idx"):
        raise DDError(f"dataset '{name}' needs dataset.root (the folder holding or receiving its files)")
    if not zca_eps > 0:
        raise DDError(f"dataset.zca_eps={zca_eps} must be > 0")
    if image_size is not None and int(image_size) < 1:
        raise DDError(f"dataset.image_size={image_size} must be a positive integer or null")
    if train_limit is not None and int(train_limit) < 1:
        raise DDError(f"dataset.train_limit={train_limit} must be a positive integer or null")


def _load_raw(name, root, download, source, train_limit) -> _Raw:
    if name == "digits":
        return _load_digits()
    if name == "tiny_imagenet":
        return _load_tiny_imagenet(root, train_limit)
    if source == "idx":
        return _load_idx(name, root if root is not None else DEBIAN_FASHION_ROOT)
    if source == "folder":
        return _load_cifar_folder(name, root)
    return _load_torchvision(name, root, download)


def _resize(x: Tensor, size: int) -> Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _from_uint8(a) -> Tensor:
    """uint8 array/tensor (N, C, H, W) -> float32 in [0, 1]."""
    return torch.as_tensor(np.ascontiguousarray(a)).float().div_(255.0)


# --- digits -----------------------------------------------------------------


def _load_digits() -> _Raw:
    # scikit-learn's digits file, read as sklearn.datasets.load_digits reads it (the same values), without
    # importing scikit-learn: that import costs seconds, more than the rest of a tiny digits run
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DDError("dataset=digits needs scikit-learn (its digits file): pip install scikit-learn")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    with gzip.open(path, "rt") as f:
        d = np.loadtxt(f, delimiter=",")
    x = torch.tensor(d[:, :-1].reshape(-1, 8, 8), dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    y = torch.tensor(d[:, -1].astype(int), dtype=torch.int64)
    return _Raw(x[:1500], y[:1500], x[1500:], y[1500:], [str(i) for i in range(10)])


# --- torchvision --------------------------------------------------------------


def _missing_hint(name: str, root: str) -> str:
    hint = f"no usable {name} files under data folder {root} and dataset.download=false; set dataset.download=true"
    if name in ("mnist", "fashion_mnist"):
        hint += " or dataset.source=idx with dataset.root pointing at the IDX files"
        if name == "fashion_mnist":
            hint += f" (Debian's dataset-fashion-mnist installs them under {DEBIAN_FASHION_ROOT})"
    if name in ("cifar10", "cifar100"):
        hint += " or dataset.source=folder to read the python batch files without checksums"
    return hint


def _load_torchvision(name: str, root: str, download: bool) -> _Raw:
    from torchvision import datasets

    try:
        if name in ("mnist", "fashion_mnist"):
            cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            tr, te = cls(root, train=True, download=download), cls(root, train=False, download=download)
            return _Raw(
                _from_uint8(tr.data.unsqueeze(1)), tr.targets.long(),
                _from_uint8(te.data.unsqueeze(1)), te.targets.long(),
                list(tr.classes),
            )  # fmt: skip
        if name == "svhn":
            tr = datasets.SVHN(root, split="train", download=download)
            te = datasets.SVHN(root, split="test", download=download)
            return _Raw(
                _from_uint8(tr.data), torch.as_tensor(tr.labels).long(),
                _from_uint8(te.data), torch.as_tensor(te.labels).long(),
                [str(i) for i in range(10)],
            )  # fmt: skip
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        tr, te = cls(root, train=True, download=download), cls(root, train=False, download=download)
        return _Raw(
            _from_uint8(tr.data.transpose(0, 3, 1, 2)), torch.as_tensor(tr.targets).long(),
            _from_uint8(te.data.transpose(0, 3, 1, 2)), torch.as_tensor(te.targets).long(),
            list(tr.classes),
        )  # fmt: skip
    except (RuntimeError, OSError, ValueError, EOFError, KeyError, pickle.UnpicklingError) as e:
        if not download:
            raise DDError(_missing_hint(name, root)) from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DDError(f"could not download/read {name} into data folder {root}: {first}") from e


# --- IDX (MNIST format) -------------------------------------------------------

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): 0,0,type,ndim, big-endian dims, data."""
    try:
        with open(path, "rb") as f:
            buf = f.read()
        if buf[:2] == b"\x1f\x8b":
            buf = gzip.decompress(buf)
    except (OSError, EOFError) as e:
        raise DDError(f"cannot read IDX file {path}: {e}") from e
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_TYPES:
        raise DDError(f"IDX file {path} has a bad header (not an MNIST-format IDX file)")
    dtype, ndim = np.dtype(_IDX_TYPES[buf[2]]), buf[3]
    start = 4 + 4 * ndim
    if len(buf) < start:
        raise DDError(f"IDX file {path} is truncated (header cut off)")
    dims = [int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4)]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(buf) - start != need:
        raise DDError(
            f"IDX file {path} is truncated or corrupt: dims {dims} need {need} data bytes, found {len(buf) - start}"
        )
    return np.frombuffer(buf, dtype=dtype, offset=start).reshape(dims).copy()  # writable for torch


def _find_idx(root: str, stem: str) -> str | None:
    for base in (stem, stem.replace("-idx", ".idx")):  # both spellings circulate
        for path in (os.path.join(root, base), os.path.join(root, base + ".gz")):
            if os.path.isfile(path):
                return path
    return None


def _load_idx(name: str, root: str) -> _Raw:
    hint = (
        f" (Debian's dataset-fashion-mnist installs them under {DEBIAN_FASHION_ROOT})"
        if name == "fashion_mnist"
        else ""
    )
    if not os.path.isdir(root):
        raise DDError(
            f"IDX folder {root} for {name} does not exist; set dataset.root to the folder with the IDX files{hint}"
        )
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind, stem in (("x", f"{prefix}-images-idx3-ubyte"), ("y", f"{prefix}-labels-idx1-ubyte")):
            path = _find_idx(root, stem)
            if path is None:
                raise DDError(f"IDX file {stem}[.gz] for {name} is missing in {root}{hint}")
            arrays[split, kind] = (path, read_idx(path))
    for split in ("train", "test"):
        (xp, x), (yp, y) = arrays[split, "x"], arrays[split, "y"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DDError(f"IDX file {xp} should hold uint8 images (N, H, W), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or (len(y) and int(y.max()) > 9):
            raise DDError(f"IDX file {yp} should hold {len(x)} labels in 0..9, got shape {y.shape}")
    classes = MNIST_CLASSES if name == "mnist" else FASHION_CLASSES

    def split(s):
        return _from_uint8(arrays[s, "x"][1][:, None]), torch.as_tensor(arrays[s, "y"][1].astype(np.int64))

    (trx, try_), (tex, tey) = split("train"), split("test")
    return _Raw(trx, try_, tex, tey, list(classes))


# --- CIFAR python batches -----------------------------------------------------


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
    ) as e:
        raise DDError(f"cannot read CIFAR batch file {path}: {type(e).__name__}") from e
    if not isinstance(d, dict):
        raise DDError(f"CIFAR batch file {path} does not hold a dict")
    return d


def _cifar_batch(path: str, label_key: bytes) -> tuple[Tensor, Tensor]:
    d = _unpickle(path)
    if b"data" not in d or label_key not in d:
        raise DDError(f"CIFAR batch file {path} lacks the keys b'data' and {label_key!r}")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DDError(
            f"CIFAR batch file {path} should hold (N, 3072) uint8 data and N labels, got {data.shape}"
        )
    return _from_uint8(data.reshape(-1, 3, 32, 32)), torch.as_tensor(labels)


def _load_cifar_folder(name: str, root: str) -> _Raw:
    sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    folder = os.path.join(root, sub) if os.path.isdir(os.path.join(root, sub)) else root
    if not os.path.isdir(folder):
        raise DDError(f"data folder {root} does not exist; it should hold {sub}/ (dataset.source=folder)")
    if name == "cifar10":
        train_files = [os.path.join(folder, f"data_batch_{i}") for i in range(1, 6)]
        train_files = [p for p in train_files if os.path.isfile(p)]  # tolerate partial copies
        test_file, meta_file, label_key, names_key, k = (
            "test_batch",
            "batches.meta",
            b"labels",
            b"label_names",
            10,
        )
    else:
        train_files = [p for p in [os.path.join(folder, "train")] if os.path.isfile(p)]
        test_file, meta_file, label_key, names_key, k = (
            "test",
            "meta",
            b"fine_labels",
            b"fine_label_names",
            100,
        )
    test_path = os.path.join(folder, test_file)
    if not train_files or not os.path.isfile(test_path):
        want = "data_batch_1..5 and test_batch" if name == "cifar10" else "train and test"
        raise DDError(f"CIFAR folder {folder} lacks {want}; point dataset.root at the extracted {sub}")
    parts = [_cifar_batch(p, label_key) for p in train_files]
    test_x, test_y = _cifar_batch(test_path, label_key)
    names = [str(i) for i in range(k)]
    meta_path = os.path.join(folder, meta_file)
    if os.path.isfile(meta_path):
        meta = _unpickle(meta_path)
        if names_key in meta:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return _Raw(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), test_x, test_y, names)


# --- Tiny ImageNet ------------------------------------------------------------


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))  # a few Tiny images are greyscale
    except OSError as e:
        raise DDError(f"cannot read image {path}: {e}") from e


def _stack_images(paths: list[str]) -> Tensor:
    if not paths:
        return torch.zeros(0, 3, 64, 64)
    arrs = [_read_image(p) for p in paths]
    shape = arrs[0].shape
    for p, a in zip(paths, arrs):
        if a.shape != shape:
            raise DDError(f"image {p} has size {a.shape[:2]}, expected {shape[:2]} like the others")
    return _from_uint8(np.stack(arrs).transpose(0, 3, 1, 2))


def _load_tiny_imagenet(root: str, train_limit: int | None) -> _Raw:
    sub = os.path.join(root, "tiny-imagenet-200")
    folder = sub if os.path.isdir(sub) else root
    wnids_path = os.path.join(folder, "wnids.txt")
    if not os.path.isfile(wnids_path):
        raise DDError(
            f"Tiny ImageNet folder {root} lacks wnids.txt; extract tiny-imagenet-200.zip there (there is no download)"
        )
    with open(wnids_path) as f:
        wnids = [line.strip() for line in f if line.strip()]
    index = {w: i for i, w in enumerate(wnids)}

    words = {}
    words_path = os.path.join(folder, "words.txt")
    if os.path.isfile(words_path):
        with open(words_path) as f:
            for line in f:
                wnid, _, text = line.rstrip("\n").partition("\t")
                words[wnid] = text.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]

    train_paths, train_y = [], []
    for w in wnids:
        d = os.path.join(folder, "train", w, "images")
        if not os.path.isdir(d):
            raise DDError(f"Tiny ImageNet class folder {d} is missing")
        files = sorted(f for f in os.listdir(d) if f.lower().endswith((".jpeg", ".jpg", ".png")))
        train_paths += [os.path.join(d, f) for f in files]
        train_y += [index[w]] * len(files)
    if train_limit is not None:  # avoid decoding images that would be dropped anyway
        train_paths, train_y = train_paths[:train_limit], train_y[:train_limit]

    ann = os.path.join(folder, "val", "val_annotations.txt")
    if not os.path.isfile(ann):
        raise DDError(f"Tiny ImageNet annotations {ann} are missing")
    test_paths, test_y = [], []
    with open(ann) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 2 or cols[1] not in index:
                raise DDError(f"{ann} line {n}: expected 'file<TAB>wnid' with a wnid from wnids.txt")
            test_paths.append(os.path.join(folder, "val", "images", cols[0]))
            test_y.append(index[cols[1]])

    return _Raw(
        _stack_images(train_paths), torch.tensor(train_y, dtype=torch.int64),
        _stack_images(test_paths), torch.tensor(test_y, dtype=torch.int64),
        names,
    )  # fmt: skip
