"""The distilled-set folder format: ``data.safetensors`` (no pickle) + ``meta.json``.

Image sets hold ``images`` (model space), ``images_pixel`` ([0,1] pixels),
``labels`` (N int64, or N x classes float), optional ``lr`` and the ZCA
transform; meta.json holds the format version, provenance, the resolved
config, the evaluation result and the sha256 of data.safetensors.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dd.errors import DDError
from dd.fsutil import atomic_dir, plain_mode

FORMAT_VERSION = 1
DATA_FILE = "data.safetensors"
META_FILE = "meta.json"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class DistilledSet:
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "text" if "inputs_embeds" in self.tensors else "image"

    @property
    def images(self) -> torch.Tensor:
        return self.tensors["images"]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors["labels"]

    @property
    def lr(self) -> torch.Tensor | None:
        return self.tensors.get("lr")

    def pixels(self) -> torch.Tensor:
        """Images in [0,1] pixel space (normalisation and ZCA undone)."""
        return self.tensors["images_pixel"]

    def hard_labels(self) -> torch.Tensor:
        return self.labels.argmax(1) if self.labels.dim() == 2 else self.labels

    def torch_dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.images, self.labels)

    def save(self, path: str | Path) -> Path:
        """Write atomically: the folder appears whole or not at all."""
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        for k, v in tensors.items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise DDError(f"refusing to export '{k}': it holds NaN or inf values")
        with atomic_dir(path) as tmp:
            save_file(tensors, str(tmp / DATA_FILE))
            os.chmod(tmp / DATA_FILE, plain_mode())  # safetensors writes 0600
            meta = dict(self.meta, format_version=FORMAT_VERSION, sha256=sha256_of(tmp / DATA_FILE))
            meta["tensors"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                               for k, v in tensors.items()}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        self.meta = meta
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DistilledSet":
        path = Path(path)
        data_path, meta_path = path / DATA_FILE, path / META_FILE
        for p in (data_path, meta_path):
            if not p.is_file():
                raise DDError(f"{p} is missing: {path} is not a ddlab distilled-set folder (needs {DATA_FILE} + {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DDError(f"{meta_path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
        if not isinstance(meta, dict):
            raise DDError(f"{meta_path} must hold a JSON object, not {type(meta).__name__}")
        version = meta.get("format_version")
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise DDError(f"{meta_path}: format_version={version!r} is not supported; this ddlab reads 1..{FORMAT_VERSION}")
        digest = sha256_of(data_path)
        if digest != meta.get("sha256"):
            raise DDError(f"{data_path} does not match the sha256 in meta.json: the file is corrupt or was modified")
        try:
            tensors = load_file(str(data_path))
        except Exception as e:  # safetensors raises its own error types
            raise DDError(f"{data_path} cannot be read as safetensors ({e})") from None
        ds = cls(tensors, meta)
        ds.validate()
        return ds

    def validate(self) -> None:
        """Shapes and label range must agree with meta.json."""
        t, m = self.tensors, self.meta
        first = "inputs_embeds" if self.kind == "text" else "images"
        for key in (first, "labels"):
            if key not in t:
                raise DDError(f"distilled set has no '{key}' tensor (has: {', '.join(sorted(t))})")
        n = t[first].shape[0]
        if t["labels"].shape[0] != n:
            raise DDError(f"distilled set has {n} examples but {t['labels'].shape[0]} labels")
        classes = m.get("num_classes")
        labels = t["labels"]
        if classes is not None:
            if labels.dim() == 1 and n and (labels.min() < 0 or labels.max() >= classes):
                raise DDError(f"labels range {int(labels.min())}..{int(labels.max())} is outside 0..{classes - 1}")
            if labels.dim() == 2 and labels.shape[1] != classes:
                raise DDError(f"soft labels have {labels.shape[1]} columns but num_classes={classes}")
        if self.kind == "text":  # every example has one mask entry per embedded position
            mask = t.get("attention_mask")
            if mask is not None and list(mask.shape) != list(t["inputs_embeds"].shape[:2]):
                raise DDError(f"attention_mask has shape {list(mask.shape)} but inputs_embeds needs "
                              f"{list(t['inputs_embeds'].shape[:2])}")
        if self.kind == "image":
            shape = [m.get("channels"), *(m.get("image_size") or [None, None])]
            if None not in shape and list(t["images"].shape[1:]) != shape:
                raise DDError(f"images have shape {list(t['images'].shape[1:])} but meta.json says {shape}")


def load(path: str | Path) -> DistilledSet:
    """Load a distilled set folder, verifying its checksum, shapes and labels."""
    return DistilledSet.load(path)


def image_set(images, labels, data, *, lr=None, method: str, ipc: int, model: dict, config=None,
              evaluation=None, extra_meta=None, extra_tensors=None) -> DistilledSet:
    """Package image-space tensors from a run on `data` (an ImageDataset) as a DistilledSet.
    extra_tensors: stored with them under their own names (a teacher's per-epoch soft labels)."""
    images = images.detach().cpu().float()
    tensors = {"images": images, "images_pixel": data.to_pixels(images), "labels": labels.detach().cpu(),
               **{k: v.detach().cpu() for k, v in (extra_tensors or {}).items()}}
    if lr is not None:
        tensors["lr"] = torch.as_tensor(lr, dtype=torch.float32).detach().cpu().reshape(-1)
    if data.zca is not None:
        tensors.update(data.zca.state())
    meta = {
        "method": method,
        "dataset": data.name,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "ipc": ipc,
        "channels": data.channels,
        "image_size": list(data.image_size),
        "mean": list(data.mean),
        "std": list(data.std),
        "zca": data.zca is not None,
        "model": model,
        "evaluation": evaluation,
        "config": config,
        **(extra_meta or {}),
    }
    return DistilledSet(tensors, meta)
