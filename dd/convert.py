"""Writing distilled sets in other formats (dd-export).

- png:         one grid picture, a row per class, in pixel space (normalisation and ZCA undone)
- imagefolder: <out>/<NN>_<class>/<i>.png, loadable by torchvision's ImageFolder (the NN prefix keeps
               ImageFolder's alphabetical class order equal to our label order)
- hf:          a Hugging Face `datasets` dataset saved to disk (images + labels; text: embeddings,
               labels, decoded tokens)
- mtt_pt:      images_best.pt / labels_best.pt / lr_best.pt, as the trajectory-matching code writes them
               (soft labels as log-probabilities: DATM's code softmaxes labels_best.pt)

The other way, other projects' sets into ours, is dd.importers (dd-import).
"""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dd.errors import DDError
from dd.export import DistilledSet, load
from dd.fsutil import atomic_dir
from dd.viz import save_grid

FORMATS = ("png", "imagefolder", "hf", "mtt_pt")


def _class_names(ds: DistilledSet) -> list[str]:
    n = ds.meta.get("num_classes") or int(ds.hard_labels().max()) + 1
    return [str(c) for c in ds.meta.get("class_names") or range(n)]


def _needs_images(ds: DistilledSet, fmt: str) -> None:
    if ds.kind != "image":
        raise DDError(f"format={fmt} needs an image set; {ds.meta.get('dataset')} is a text set (use format=hf)")


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(C,H,W) in [0,1] -> HxW or HxWx3 uint8."""
    a = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return a[..., 0] if a.shape[-1] == 1 else a


def _folder_name(index: int, name: str) -> str:
    return f"{index:02d}_" + re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def to_png(ds: DistilledSet, out: Path) -> Path:
    _needs_images(ds, "png")
    path = out if out.suffix == ".png" else out / "grid.png"
    title = f"{ds.meta.get('method')} {ds.meta.get('dataset')} ipc={ds.meta.get('ipc')}"
    save_grid(ds.pixels(), ds.labels, _class_names(ds), path, max_per_class=max(10, int(ds.meta.get("ipc") or 10)),
              title=title)
    return path


def to_imagefolder(ds: DistilledSet, out: Path) -> Path:
    _needs_images(ds, "imagefolder")
    names = _class_names(ds)
    hard = ds.hard_labels()
    with atomic_dir(out) as tmp:
        for c, name in enumerate(names):
            (tmp / _folder_name(c, name)).mkdir()
        for i, (img, y) in enumerate(zip(ds.pixels(), hard.tolist())):
            Image.fromarray(_to_uint8(img)).save(tmp / _folder_name(y, names[y]) / f"{i:05d}.png")
    return out


def to_hf(ds: DistilledSet, out: Path) -> Path:
    try:
        import datasets
    except ImportError:
        raise DDError("format=hf needs the `datasets` package: pip install datasets") from None
    names = _class_names(ds)
    hard = ds.hard_labels().tolist()
    if ds.kind == "image":
        columns = {"image": [Image.fromarray(_to_uint8(p)) for p in ds.pixels()], "label": hard}
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    else:
        emb = ds.tensors["inputs_embeds"]
        columns = {"inputs_embeds": emb.numpy().tolist(), "label": hard,
                   "tokens": ds.meta.get("decoded_tokens") or [""] * len(hard)}
        features = datasets.Features({
            "inputs_embeds": datasets.Array2D(shape=tuple(emb.shape[1:]), dtype="float32"),
            "label": datasets.ClassLabel(names=names),
            "tokens": datasets.Value("string") if not ds.meta.get("decoded_tokens") or isinstance(
                ds.meta["decoded_tokens"][0], str) else datasets.Sequence(datasets.Value("string")),
        })
    if ds.labels.dim() == 2:  # keep soft labels beside the argmax
        columns["soft_label"] = ds.labels.numpy().tolist()
        features["soft_label"] = datasets.Sequence(datasets.Value("float32"))
    hf = datasets.Dataset.from_dict(columns, features=features)
    with atomic_dir(out) as tmp:
        hf.save_to_disk(str(tmp))
    return out


def to_mtt_pt(ds: DistilledSet, out: Path) -> Path:
    _needs_images(ds, "mtt_pt")
    with atomic_dir(out) as tmp:
        torch.save(ds.images.clone(), tmp / "images_best.pt")
        labels = ds.labels
        if labels.dim() == 2:  # DATM reads labels_best.pt as logits (softmax at T=1); log p gives back p
            labels = labels.float().clamp_min(1e-30).log()
        torch.save(labels.clone(), tmp / "labels_best.pt")
        if ds.lr is not None:
            torch.save(ds.lr.reshape(()).clone() if ds.lr.numel() == 1 else ds.lr.clone(), tmp / "lr_best.pt")
    return out


WRITERS = {"png": to_png, "imagefolder": to_imagefolder, "hf": to_hf, "mtt_pt": to_mtt_pt}


def export_set(path: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the ddlab set at `path` to `out` in format `fmt`; what was written appears whole or not at all."""
    if fmt not in FORMATS:
        raise DDError(f"format '{fmt}' is unknown; choose one of: {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise DDError(f"path {path} does not exist")
    return WRITERS[fmt](load(path), Path(out))
