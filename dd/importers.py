"""Reading other projects' released distilled sets into a ddlab DistilledSet (dd-import).

Every reader returns the source's images in the space the source stored them in, its labels and
provenance; `import_set` then states that space, checks it and brings the images into the target
dataset's model space. What each format is, from the authors' code:

- mtt: `images_best.pt`, `labels_best.pt` (N int64), `lr_best.pt` (GeorgeCazenavette/mtt-distillation,
  distill.py). Images are mean/std-normalised, or with --zca whitened by kornia
  ZCAWhitening(eps=0.1) fitted on the raw [0, 1] train pixels with no mean/std step (utils.get_dataset),
  which is exactly ddlab's `dataset.zca=true`. CIFAR-100 is normalised with CIFAR-10's statistics.
- datm: the same three files (NUS-HPC-AI-Lab/DATM, distill/DATM.py), but `labels_best.pt` holds the
  learned soft labels as (N, classes) logits: the student's SoftCrossEntropy applies softmax (T = 1) to
  them. We store softmax(logits), the distribution ddlab's evaluator (`set_loss`) expects. Same
  normalisation/ZCA recipe as mtt.
- dc: `res_<method>_<dataset>_<model>_<ipc>ipc.pt` (VICO-UoE/DatasetCondensation, main.py /
  main_DM.py; older versions: `res_<dataset>_<model>_<ipc>ipc.pt`): {'data': [[image_syn, label_syn],
  ... one per experiment], 'accs_all_exps': {model: [accuracies]}}. Images are mean/std-normalised,
  never whitened; the current code uses each dataset's own statistics (early versions normalised
  CIFAR-100 with CIFAR-10's: say source_stats=cifar10 for those). The accuracies are numpy float64
  scalars, so numpy scalars and dtypes are the only globals we allow besides tensors.
- imagefolder (SRe2L, RDED, ddlab's own imagefolder export): one sub-folder per class of 8-bit
  png/jpg images in [0, 1] pixel space; class order = sorted folder names (SRe2L writes new000,
  new001, ...; RDED 00000, 00001, ...; ddlab NN_<class>). Soft labels: SRe2L's FKD relabel files
  (`epoch_<e>/batch_<b>.tar`) hold [crop coords, flip flags, mix index, mix lambda, mix box, teacher
  logits] for a batch of *augmented crops* drawn by a seeded RandomSampler; the files name no image,
  the mapping is only recoverable by replaying that sampler over the training script's own
  ImageFolder order, and each row labels one random crop (plus mixing), not an image. We refuse them.
  RDED (LINs-lab/RDED) and SRe2L's small-dataset scripts relabel online with the teacher and store no
  labels, so there is nothing to import: such sets come in with hard labels.
- ncfm: `distilled_data/data_<it>.pt` = [data (N, C, H, W), targets (N,)] (gszfwsb/NCFM,
  utils/ddp.py), in [0, 1] pixels (clamped every step; normalisation happens in its augmentation).
  Each stored image is a factor x factor mosaic: its evaluation splits every image into factor^2
  crops, upsampled bilinearly to full size, per class (condenser/decode.py, decode_type 'single').
  All released configs use factor 2 (our default; factor 1 keeps the images as stored). The file
  does not record the factor, nor 'multi'/'bound' decoding, which we do not support.

The source space (`source_space`): `normalized` (x = (p - mean) / std with `source_stats`),
`zca` (the MTT recipe above) or `pixels`. When it equals the target's space the tensors are kept
bit for bit; otherwise they go through pixels (exact, no clamping), e.g. a DC set into a ZCA dataset.
Either way the pixels must lie (almost all) in [0, 1], or the import is refused naming the range
found: a gross mismatch (0..255 values, normalised tensors read as pixels) cannot pass silently.
The check cannot tell a ZCA set from a normalised one, so for mtt/datm the statement is the user's:
`source_space`, by default what `dataset.zca` says.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dd.errors import DDError
from dd.export import DistilledSet, image_set

SOURCE_FORMATS = ("auto", "mtt", "datm", "dc", "imagefolder", "ncfm")
SPACES = ("normalized", "zca", "pixels")
MTT_FILES = ("images_best.pt", "labels_best.pt", "lr_best.pt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
# the reference trajectory-matching code (MTT, DATM) normalises CIFAR-100 with CIFAR-10's statistics
REFERENCE_STATS = {"cifar100": "cifar10"}
# "almost all" pixels in [0, 1]: distilled pixels drift a little, a wrong statement moves them a lot
RANGE_SLACK, RANGE_OUTSIDE = 0.25, 0.01
ZCA_RECIPE = "kornia ZCAWhitening(eps=0.1) fitted on the raw [0, 1] train pixels"

_scalar = np._core.multiarray.scalar
# DC's accuracies are numpy float64 scalars; files written under numpy 1 name the old module path
NUMPY_GLOBALS = [_scalar, (_scalar, "numpy.core.multiarray.scalar"), np.dtype, np.dtypes.Float64DType,
                 np.dtypes.Float32DType, np.dtypes.Int64DType, np.dtypes.Int32DType]


@dataclass
class Source:
    """What a reader found: images in `space`, labels (N int64 or N x classes distributions)."""

    images: torch.Tensor
    labels: torch.Tensor
    space: str
    method: str
    lr: torch.Tensor | None = None
    model: dict = field(default_factory=lambda: {"name": "unknown"})
    stats: str | None = None  # which dataset's mean/std the source normalised with; None: the target's own
    meta: dict = field(default_factory=dict)


def load_pt(path: Path):
    """torch.load with weights_only=True (tensors, containers, numpy scalars); anything else is refused."""
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = f"it pickles {found.group(1)}" if found else f"{type(e).__name__}: it is corrupt or not a torch file"
        raise DDError(f"{path} cannot be loaded with weights_only=True ({why}); ddlab reads only tensors, "
                      "lists, dicts and numbers from .pt files and never runs pickled code") from None


def _tensor(obj, what: str, dims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(obj, torch.Tensor) or obj.dim() not in dims:
        got = f"a {obj.dim()}-D tensor" if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise DDError(f"{what} must be a {' or '.join(f'{d}-D' for d in dims)} tensor, got {got}")
    return obj


def _check_images(images: torch.Tensor, data, what: str) -> torch.Tensor:
    want = [data.channels, *data.image_size]
    if images.dim() != 4 or list(images.shape[1:]) != want:
        raise DDError(f"{what} has shape {list(images.shape)} but {data.name} images are [N, {', '.join(map(str, want))}]")
    if not images.is_floating_point():
        raise DDError(f"{what} holds {str(images.dtype).removeprefix('torch.')} values; image tensors are floats")
    return images.float()


def _hard_labels(labels: torch.Tensor, n: int, data, what: str) -> torch.Tensor:
    if labels.dim() != 1 or len(labels) != n:
        raise DDError(f"{what} has shape {list(labels.shape)}; expected [{n}] class indices")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise DDError(f"{what} holds non-integer values; expected class indices")
    labels = labels.long()
    if n and (labels.min() < 0 or labels.max() >= data.num_classes):
        raise DDError(f"{what} has labels {int(labels.min())}..{int(labels.max())} but {data.name} has "
                      f"classes 0..{data.num_classes - 1}")
    return labels


# --- readers --------------------------------------------------------------------------------------


def read_mtt(folder: Path, data, *, soft: bool | None = None) -> Source:
    """MTT (hard labels) or DATM (soft-label logits); soft=None accepts either."""
    if not folder.is_dir():
        raise DDError(f"{folder} is not a folder; an mtt/datm set is a folder with {', '.join(MTT_FILES)}")
    found = {}
    for name in MTT_FILES:
        path = folder / name
        if path.is_file():
            found[name] = load_pt(path)
        elif name != "lr_best.pt":
            raise DDError(f"{path} is missing; an mtt/datm folder holds {', '.join(MTT_FILES)} (lr optional)")
    images = _check_images(_tensor(found["images_best.pt"], "images_best.pt", (4,)), data, "images_best.pt")
    labels = _tensor(found["labels_best.pt"], "labels_best.pt", (1, 2))
    lr = found.get("lr_best.pt")
    if lr is not None and (not isinstance(lr, torch.Tensor) or lr.numel() != 1):
        raise DDError("lr_best.pt must hold one number (the learned learning rate)")
    if labels.dim() == 2:
        if soft is False:
            raise DDError("labels_best.pt holds (N, classes) soft labels, which MTT never writes: this is a DATM "
                          "set, use --format datm")
        if list(labels.shape) != [len(images), data.num_classes]:
            raise DDError(f"labels_best.pt has shape {list(labels.shape)} but {len(images)} images of "
                          f"{data.num_classes} classes need [{len(images)}, {data.num_classes}]")
        # DATM's student trains on softmax(stored labels) at T = 1: they are logits
        return Source(images, torch.softmax(labels.float(), dim=1), "normalized", "datm", lr,
                      meta={"labels": "softmax (T=1) of DATM's stored soft-label logits"})
    if soft:
        raise DDError("labels_best.pt holds hard labels, but DATM stores (N, classes) soft-label logits: "
                      "use --format mtt")
    return Source(images, _hard_labels(labels, len(images), data, "labels_best.pt"), "normalized", "mtt", lr)


def read_dc(path: Path, data, *, experiment: int = 0) -> Source:
    if not path.is_file():
        raise DDError(f"{path} is not a file; a Dataset Condensation set is one res_<method>_<dataset>_<model>_<ipc>ipc.pt")
    res = load_pt(path)
    if not isinstance(res, dict) or not isinstance(res.get("data"), list | tuple) or not res["data"]:
        raise DDError(f"{path} is not a Dataset Condensation result: expected a dict with 'data' = "
                      "[[images, labels], ...] (one entry per experiment)")
    exps = res["data"]
    if not 0 <= experiment < len(exps):
        raise DDError(f"--experiment {experiment} is out of range: {path.name} holds {len(exps)} experiment(s), "
                      f"use 0..{len(exps) - 1}")
    pair = exps[experiment]
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        raise DDError(f"{path}: data[{experiment}] must be [images, labels]")
    what = f"{path.name} data[{experiment}]"
    images = _check_images(_tensor(pair[0], f"{what} images", (4,)), data, f"{what} images")
    labels = _hard_labels(_tensor(pair[1], f"{what} labels", (1,)), len(images), data, f"{what} labels")
    # res_<method>_<dataset>_<model>_<ipc>ipc.pt (main.py, main_DM.py) or the older res_<dataset>_<model>_<ipc>ipc.pt
    parts = path.stem.split("_")
    method, model = ("dc", None)
    if len(parts) == 5 and parts[0] == "res":
        method, model = parts[1].lower(), parts[3]
    elif len(parts) == 4 and parts[0] == "res":
        model = parts[2]
    accs = res.get("accs_all_exps")
    accs = {str(k): [float(a) for a in v] for k, v in accs.items()} if isinstance(accs, dict) else None
    return Source(images, labels, "normalized", method, model={"name": model or "unknown"},
                  meta={"experiment": experiment, "experiments": len(exps), "source_accuracies": accs})


def read_imagefolder(folder: Path, data) -> Source:
    from PIL import Image

    if not folder.is_dir():
        raise DDError(f"{folder} is not a folder; an imagefolder set has one sub-folder of images per class")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for p in [folder, *classes]:
        if p.name.startswith("epoch_") or any(p.glob("batch_*.tar")):
            raise DDError(_FKD_REFUSAL.format(path=p))
    if len(classes) != data.num_classes:
        raise DDError(f"{folder} has {len(classes)} class folders but {data.name} has {data.num_classes} classes "
                      "(class order = sorted folder names)")
    mode = {1: "L", 3: "RGB"}.get(data.channels)
    if mode is None:
        raise DDError(f"imagefolder import supports 1- or 3-channel datasets, not {data.channels} channels")
    images, labels = [], []
    for c, sub in enumerate(classes):
        for f in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(f) as im:
                    a = np.asarray(im.convert(mode), dtype=np.uint8)
            except OSError as e:
                raise DDError(f"{f} cannot be read as an image ({e})") from None
            if a.shape[:2] != tuple(data.image_size):
                raise DDError(f"{f} is {a.shape[1]}x{a.shape[0]} pixels but {data.name} images are "
                              f"{data.image_size[1]}x{data.image_size[0]}; ddlab does not resize imports")
            images.append(torch.from_numpy(a.reshape(*a.shape[:2], -1).copy()).permute(2, 0, 1))
            labels.append(c)
    if not images:
        raise DDError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    pixels = torch.stack(images).float() / 255
    return Source(pixels, torch.tensor(labels), "pixels", "imagefolder",
                  meta={"class_folders": [p.name for p in classes], "labels": "hard, from the class folders"})


_FKD_REFUSAL = ("{path} holds SRe2L/FKD relabel files (epoch_*/batch_*.tar); they cannot be imported: each row "
                "is the teacher's output for a random augmented crop (coords, flip, mixup/cutmix) of a batch drawn "
                "by a seeded sampler, and the files name no image, so they do not map to the images; import the "
                "class folders alone (hard labels)")


def decode_mosaics(images: torch.Tensor, labels: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NCFM's 'single' decoding: each image -> factor^2 crops, each upsampled to full size, class by class."""
    if factor == 1:
        return images, labels
    size = images.shape[-2:]
    h = images.shape[-1]
    if h % factor:  # the reference pads the right/bottom edge with grey
        images = F.pad(images, (0, factor - h % factor, 0, factor - h % factor), value=0.5)
    s = math.ceil(h / factor)
    out_x, out_y = [], []
    for c in labels.unique().tolist():  # class by class, as the reference's evaluation decodes
        x, y = images[labels == c], labels[labels == c]
        crops = [x[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s] for i in range(factor) for j in range(factor)]
        out_x.append(F.interpolate(torch.cat(crops), size=tuple(size), mode="bilinear", align_corners=False))
        out_y.append(y.repeat(factor * factor))
    return torch.cat(out_x), torch.cat(out_y)


def read_ncfm(path: Path, data, *, factor: int = 2) -> Source:
    if not path.is_file():
        raise DDError(f"{path} is not a file; an NCFM set is one distilled_data/data_<iteration>.pt")
    if factor < 1:
        raise DDError(f"--factor {factor} must be a positive integer (NCFM's condense.factor; 1: no mosaics)")
    obj = load_pt(path)
    if not isinstance(obj, list | tuple) or len(obj) != 2:
        raise DDError(f"{path} is not an NCFM set: expected [data, targets]")
    images = _check_images(_tensor(obj[0], f"{path.name} data", (4,)), data, f"{path.name} data")
    labels = _hard_labels(_tensor(obj[1], f"{path.name} targets", (1,)), len(images), data, f"{path.name} targets")
    stored = len(images)
    images, labels = decode_mosaics(images, labels, factor)
    return Source(images, labels, "pixels", "ncfm",
                  meta={"factor": factor, "decode": "single", "stored_images": stored})


# --- detection and conversion -------------------------------------------------------------------------


def detect(path: Path) -> str:
    """The source format of `path`, from its layout (folders) or its content (.pt files)."""
    if path.is_dir():
        if any((path / name).is_file() for name in MTT_FILES):  # the reader names what is missing
            labels = path / "labels_best.pt"
            return "datm" if labels.is_file() and getattr(load_pt(labels), "dim", lambda: 1)() == 2 else "mtt"
        if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            return "imagefolder"
        raise DDError(f"cannot tell the format of folder {path}: it has neither images_best.pt (mtt/datm) nor "
                      "class sub-folders (imagefolder); give --format")
    if re.fullmatch(r"batch_\d+\.tar", path.name):
        raise DDError(_FKD_REFUSAL.format(path=path))
    obj = load_pt(path)
    if isinstance(obj, dict) and "data" in obj:
        return "dc"
    if isinstance(obj, list | tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return "ncfm"
    raise DDError(f"cannot tell the format of {path}: it is neither a Dataset Condensation dict with 'data' "
                  "nor an NCFM [data, targets] pair; give --format")


def _to_pixels(x: torch.Tensor, space: str, mean, std, zca) -> torch.Tensor:
    """Source space -> pixels, without clamping (the range check must see what is there)."""
    if space == "pixels":
        return x
    if space == "zca":
        return zca.invert(x)
    return x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def _check_range(pixels: torch.Tensor, statement: str) -> None:
    lo, hi = -RANGE_SLACK, 1 + RANGE_SLACK
    outside = ((pixels < lo) | (pixels > hi)).float().mean().item() if pixels.numel() else 0.0
    if outside > RANGE_OUTSIDE:
        raise DDError(f"read as {statement}, the set's pixels span {pixels.min().item():.3g}..{pixels.max().item():.3g} "
                      f"({outside:.1%} outside [{lo}, {hi}]), not [0, 1]: the stated preprocessing is wrong; "
                      f"state it with --source-space {'|'.join(SPACES)} and --source-stats DATASET "
                      "(or --no-range-check to take responsibility)")


def import_set(path: str | Path, load_data: Callable[[bool], object], *, dataset_zca: bool = False,
               source_format: str = "auto", source_space: str | None = None, source_stats: str | None = None,
               experiment: int = 0, factor: int | None = None, ipc: int | None = None,
               range_check: bool = True) -> DistilledSet:
    """Read `path` (a set in `source_format`) into the model space of the dataset `load_data(dataset_zca)`.

    `load_data(zca)` loads the target ImageDataset; it is called a second time with the other zca flag only
    when the source's space needs the other one's parameters (its ZCA, or its own mean/std)."""
    from dd.data.images import STATS

    path = Path(path)
    if source_format not in SOURCE_FORMATS:
        raise DDError(f"--format '{source_format}' is unknown; choose one of: {', '.join(SOURCE_FORMATS)}")
    if source_space is not None and source_space not in SPACES:
        raise DDError(f"--source-space '{source_space}' is unknown; choose one of: {', '.join(SPACES)}")
    if source_stats is not None and source_stats not in STATS:
        raise DDError(f"--source-stats '{source_stats}' is unknown; choose one of: {', '.join(STATS)}")
    if not path.exists():
        raise DDError(f"path {path} does not exist")
    fmt = detect(path) if source_format == "auto" else source_format
    if experiment != 0 and fmt != "dc":
        raise DDError(f"--experiment only applies to dc sets (a res_*.pt file holds several experiments); {path} is {fmt}")
    if factor is not None and fmt != "ncfm":
        raise DDError(f"--factor only applies to ncfm sets (their mosaic factor); {path} is {fmt}")
    data = load_data(dataset_zca)

    if fmt in ("mtt", "datm"):
        src = read_mtt(path, data, soft=None if source_format == "auto" else fmt == "datm")
        src.space = "zca" if data.zca is not None else "normalized"  # the files do not say: dataset.zca does
        stated_by = "dataset.zca (the files do not record it)"
        src.stats = REFERENCE_STATS.get(data.name)
    elif fmt == "dc":
        src, stated_by = read_dc(path, data, experiment=experiment), "the DC code (never whitens)"
    elif fmt == "imagefolder":
        src, stated_by = read_imagefolder(path, data), "the format (8-bit image files)"
    else:
        src, stated_by = read_ncfm(path, data, factor=2 if factor is None else factor), "the NCFM code (clamped pixels)"
    if source_space is not None:
        if fmt == "imagefolder" and source_space != "pixels":
            raise DDError(f"--source-space {source_space} does not apply to imagefolder sets: image files are pixels")
        src.space, stated_by = source_space, "source_space"
    if source_stats is not None:
        if src.space != "normalized":
            raise DDError(f"--source-stats {source_stats} only applies to a normalized source; this one is {src.space}")
        src.stats = source_stats

    # the source's transform, then the target's: equal transforms keep the tensors bit for bit
    target_space = "zca" if data.zca is not None else "normalized"
    mean = std = zca = None
    if src.space == "normalized":
        if src.stats is not None and src.stats != data.name:
            mean, std = STATS[src.stats]
        elif data.zca is None:
            mean, std = data.mean, data.std
        elif data.name in STATS:
            mean, std = STATS[data.name]
        else:  # digits: ddlab computes its statistics, found on the normalised copy
            other = load_data(False)
            mean, std = other.mean, other.std
    elif src.space == "zca":
        zca = data.zca if data.zca is not None else load_data(True).zca
        mean, std = [0.0] * data.channels, [1.0] * data.channels
    statement = {"pixels": "[0, 1] pixels", "zca": f"ZCA-whitened ({ZCA_RECIPE})",
                 "normalized": f"mean/std-normalised (mean {_fmt(mean)}, std {_fmt(std)})"}[src.space]
    pixels = _to_pixels(src.images, src.space, mean, std, zca)
    if range_check:
        _check_range(pixels, statement)
    same = src.space == target_space and (src.space == "zca" or (list(mean) == list(data.mean)
                                                                and list(std) == list(data.std)))
    images = src.images if same else data.from_pixels(pixels)

    counts = torch.bincount(src.labels if src.labels.dim() == 1 else src.labels.argmax(1), minlength=data.num_classes)
    provenance = {
        "imported_from": str(path.resolve()),
        "source_format": fmt,
        "source_preprocessing": {"space": src.space, "statement": statement, "stated_by": stated_by,
                                 "mean": mean, "std": std, "range_checked": range_check},
        "converted": "kept as stored" if same else f"via pixels into {data.name}'s {target_space} space",
        **src.meta,
    }
    return image_set(images, src.labels, data, lr=src.lr, method=src.method, ipc=ipc or int(counts.max()),
                     model=src.model, extra_meta=provenance)


def import_into(path: str | Path, out: str | Path, *, dataset: str, root: str | None = None, zca: bool = False,
                data_source: str = "torchvision", download: bool = False, source_format: str = "auto",
                source_space: str | None = None, source_stats: str | None = None, experiment: int = 0,
                factor: int | None = None, ipc: int | None = None, range_check: bool = True) -> DistilledSet:
    """import_set of `path` into the image dataset `dataset` (load_image_dataset's root, zca, source and
    download), saved at `out`: the folder appears whole or not at all."""
    from dd.data import load_image_dataset

    def load_data(with_zca: bool):
        return load_image_dataset(dataset, root=root, zca=with_zca, source=data_source, download=download)

    ds = import_set(path, load_data, dataset_zca=zca, source_format=source_format, source_space=source_space,
                    source_stats=source_stats, experiment=experiment, factor=factor, ipc=ipc, range_check=range_check)
    ds.save(out)
    return ds


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]" if values is not None else "-"


def from_mtt_pt(folder: Path, data, *, ipc: int | None = None, method: str = "mtt") -> DistilledSet:
    """Wrap images_best.pt / labels_best.pt [/ lr_best.pt] in `data`'s own space, as before (kept for callers)."""
    ds = import_set(folder, lambda zca: data, dataset_zca=data.zca is not None, ipc=ipc,
                    source_format="auto")
    ds.meta["method"] = method if ds.meta["source_format"] == "mtt" else ds.meta["method"]
    return ds
