"""Teacher soft labels for students, as SRe2L and RDED evaluate their sets (FKD-style relabelling).

In evaluation epoch e, image i of the set is seen through one random resized crop (and, where the
dataset allows it, a horizontal flip), and the student's target is the teacher's softmax at
temperature T on that crop; the loss is KL (dd.image.train.distill_loss). Two label sources:

- `StoredLabels` (eval.labels=stored): every epoch's crops and the teacher's logits on them are
  generated once (`generate`) and travel with the set, so evaluation needs no teacher. Tensors of an
  exported set: relabel_crops (E, N, 5) fp16 (centre y, centre x, height, width as fractions of the
  side, flip), relabel_logits (E, N, C) fp16, or with relabel.topk = k the k largest logits (E, N, k)
  fp16 and relabel_classes (E, N, k) int16 (the other classes get probability 0).
- `TeacherLabels` (eval.labels=teacher): the teacher labels each batch's freshly drawn crops online
  (DD-Ranking's M mode); the crops come from the evaluation model's own data stream.

A crop takes area fraction U(scale_min, scale_max) and aspect ratio log-uniform in [3/4, 4/3]
(torchvision's RandomResizedCrop; a side that would exceed the image is clipped to it instead of
redrawn), a uniformly placed centre, and is resampled bilinearly to the image size from the image
itself (so the last output row/column reads a fraction of a pixel beyond the crop where torchvision's
crop-then-resize repeats the crop's edge).
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dd import seeds
from dd.device import to_device
from dd.errors import DDError
from dd.image.base import SynSet

TENSORS = ("relabel_crops", "relabel_logits", "relabel_classes")
RATIO = (3 / 4, 4 / 3)


@dataclass
class RelabelConfig:
    """FKD-style relabelling (dd.image.relabel): for every evaluation epoch, each image's random resized
    crop (and flip) and the teacher's logits on it, generated once and stored with the set."""

    epochs: int | None = None  # epochs stored; null = eval.epochs
    scale_min: float = 0.08  # RandomResizedCrop's area range, as SRe2L / RDED (torchvision's default)
    scale_max: float = 1.0
    topk: int = 0  # 0: every class's logit (fp16); k > 0: the k largest logits (fp16) and their classes
    flip: bool | None = None  # horizontal flips; null = where the dataset allows them (not digits)
    batch_size: int = 512  # images per teacher forward while generating


def check_relabel_config(r) -> None:
    if not 0 < float(r.scale_min) <= float(r.scale_max) <= 1:
        raise DDError(f"relabel.scale_min={r.scale_min}, relabel.scale_max={r.scale_max}: need 0 < min <= max <= 1")
    if int(r.topk) < 0:
        raise DDError(f"relabel.topk={r.topk} is not allowed; give 0 (every class) or a positive k")
    if r.epochs is not None and int(r.epochs) <= 0:
        raise DDError(f"relabel.epochs={r.epochs} is not allowed; give a positive number, or null for eval.epochs")


def check_temperature(t: float) -> float:
    if not (float(t) > 0 and math.isfinite(float(t))):
        raise DDError(f"eval.temperature={t} is not allowed; it must be a positive finite number")
    return float(t)


def draw_crops(n: int, generator: torch.Generator, scale: tuple[float, float], flip: bool) -> torch.Tensor:
    """(n, 5) float32 on the CPU: centre y, centre x, height, width (fractions of the side), flip (0/1)."""
    u = torch.rand(n, 5, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ratio = torch.exp(math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * u[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cy = h / 2 + (1 - h) * u[:, 2]
    cx = w / 2 + (1 - w) * u[:, 3]
    f = (u[:, 4] < 0.5).float() if flip else torch.zeros(n)
    return torch.stack([cy, cx, h, w, f], 1)


def apply_crops(x: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """Each image's crop resampled (bilinear) to the full size; crops (n, 5) as draw_crops gives them."""
    crops = crops.to(device=x.device, dtype=x.dtype)
    cy, cx, h, w, f = crops.unbind(1)
    sign = 1 - 2 * f  # a flip mirrors the sampling grid
    zero = torch.zeros_like(cy)
    theta = torch.stack([torch.stack([w * sign, zero, 2 * cx - 1], 1), torch.stack([zero, h, 2 * cy - 1], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class LabelStore:
    """Per epoch and image: the crop and the teacher's logits on it (all of them, or the top k)."""

    crops: torch.Tensor  # (E, N, 5) float16
    logits: torch.Tensor  # (E, N, C) or (E, N, k) float16
    classes: torch.Tensor | None  # (E, N, k) int16 with top-k, else None
    num_classes: int

    @property
    def epochs(self) -> int:
        return self.crops.shape[0]

    @property
    def size(self) -> int:
        return self.crops.shape[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def describe(self) -> str:
        kept = f"top-{self.logits.shape[2]} logits + classes" if self.classes is not None else "all logits"
        return f"{self.epochs} epochs x {self.size} images: crop (5 x fp16) + {kept} (fp16)"

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"relabel_crops": self.crops, "relabel_logits": self.logits}
        if self.classes is not None:
            out["relabel_classes"] = self.classes
        return out

    @classmethod
    def from_tensors(cls, tensors: dict, num_classes: int) -> "LabelStore | None":
        """The store an exported set carries, or None; a partial or misshapen one is refused."""
        present = [k for k in TENSORS if k in tensors]
        if not present:
            return None
        if "relabel_crops" not in present or "relabel_logits" not in present:
            raise DDError(f"the set holds {present} but stored labels need relabel_crops and relabel_logits")
        crops, logits, classes = tensors["relabel_crops"], tensors["relabel_logits"], tensors.get("relabel_classes")
        width = num_classes if classes is None else classes.shape[-1]
        if crops.dim() != 3 or crops.shape[2] != 5 or logits.shape[:2] != crops.shape[:2] or logits.shape[2] != width:
            raise DDError(f"stored labels have crops {list(crops.shape)} and logits {list(logits.shape)}; expected "
                          f"(E, N, 5) and (E, N, {width})")
        return cls(crops, logits, classes, num_classes)

    def to(self, device) -> "LabelStore":
        move = lambda t: None if t is None else to_device(t, device)  # noqa: E731
        return LabelStore(move(self.crops), move(self.logits), move(self.classes), self.num_classes)

    def targets(self, epoch: int, idx: torch.Tensor, temperature: float) -> torch.Tensor:
        """softmax(logits / T) of images idx at epoch (top-k: the classes not kept get 0)."""
        logits = self.logits[epoch, idx].float()
        if self.classes is not None:
            full = torch.full((len(idx), self.num_classes), float("-inf"), device=logits.device)
            logits = full.scatter(1, self.classes[epoch, idx].long(), logits)
        return F.softmax(logits / temperature, dim=1)


@torch.no_grad()
def generate(teacher, images: torch.Tensor, epochs: int, relabel_cfg, flip: bool, seed: int,
             progress: bool = True, stream: tuple = ("relabel",)) -> LabelStore:
    """Every epoch's crops of `images` and the teacher's logits on them; epoch e's crops come from the stream
    (*stream, seed, e) (default ("relabel", seed, e)). `flip`: the dataset allows flips (relabel.flip overrides)."""
    check_relabel_config(relabel_cfg)
    device = next(teacher.model.parameters()).device
    if relabel_cfg.flip is not None:
        flip = bool(relabel_cfg.flip)
    scale = (float(relabel_cfg.scale_min), float(relabel_cfg.scale_max))
    topk = int(relabel_cfg.topk)
    n = len(images)
    x = to_device(images.detach(), device)
    crops, logits, classes = [], [], []
    for e in tqdm(range(epochs), desc="relabel", disable=not progress, leave=False):
        c = draw_crops(n, seeds.generator(stream[0], seed, *stream[1:], e), scale, flip)
        out = teacher.logits(apply_crops(x, to_device(c, device)), int(relabel_cfg.batch_size))
        if topk:
            values, top = out.topk(min(topk, out.shape[1]), dim=1)
            logits.append(values.half().cpu())
            classes.append(top.to(torch.int16).cpu())
        else:
            logits.append(out.half().cpu())
        crops.append(c.half())
    return LabelStore(torch.stack(crops), torch.stack(logits), torch.stack(classes) if topk else None,
                      teacher_classes(teacher))


def teacher_classes(teacher) -> int:
    return int(list(teacher.model.parameters())[-1].shape[0])


class StoredLabels:
    """eval.labels=stored: the set's own crops and teacher logits, epoch by epoch."""

    name = "stored"

    def __init__(self, store: LabelStore, temperature: float):
        self.store, self.temperature = store, check_temperature(temperature)

    def prepare(self, epochs: int, n: int, device) -> "StoredLabels":
        if epochs > self.store.epochs:
            raise DDError(f"the set stores soft labels for {self.store.epochs} epochs but the evaluation trains "
                          f"{epochs}; set eval.epochs <= {self.store.epochs}, or eval.labels=teacher")
        if n != self.store.size:
            raise DDError(f"the stored labels cover {self.store.size} images but the set has {n}")
        return StoredLabels(self.store.to(device), self.temperature)

    def batch(self, x, idx, epoch, generator):
        return apply_crops(x, self.store.crops[epoch, idx]), self.store.targets(epoch, idx, self.temperature)


class TeacherLabels:
    """eval.labels=teacher: fresh crops from the model's data stream, labelled by the teacher online."""

    name = "teacher"

    def __init__(self, teacher, temperature: float, relabel_cfg, flip: bool):
        check_relabel_config(relabel_cfg)
        self.teacher, self.temperature = teacher, check_temperature(temperature)
        self.scale = (float(relabel_cfg.scale_min), float(relabel_cfg.scale_max))
        self.flip = flip if relabel_cfg.flip is None else bool(relabel_cfg.flip)

    def prepare(self, epochs: int, n: int, device) -> "TeacherLabels":
        return self

    @torch.no_grad()
    def batch(self, x, idx, epoch, generator):
        crops = to_device(draw_crops(len(x), generator, self.scale, self.flip), x.device)
        x = apply_crops(x, crops)
        return x, F.softmax(self.teacher.model(x) / self.temperature, dim=1)


LABEL_MODES = ("auto", "hard", "stored", "teacher")


def label_source(eval_cfg, relabel_cfg, store: LabelStore | None, teacher_fn, flip: bool):
    """(the LabelSource for eval.labels, or None for the set's own labels with DSA; the mode used).
    teacher_fn: () -> Teacher, called only for eval.labels=teacher."""
    mode = eval_cfg.get("labels", "auto")
    if mode not in LABEL_MODES:
        raise DDError(f"eval.labels '{mode}' is unknown; choose one of: {', '.join(LABEL_MODES)}")
    if mode == "auto":
        mode = "stored" if store is not None else "hard"
    if mode == "hard":
        return None, mode
    if mode == "stored":
        if store is None:
            raise DDError("eval.labels=stored but the set stores no soft labels; use eval.labels=hard, or teacher")
        return StoredLabels(store, eval_cfg.get("temperature", 1.0)), mode
    return TeacherLabels(teacher_fn(), eval_cfg.get("temperature", 1.0), relabel_cfg, flip), mode


def relabel_config(relabel_cfg, meta: dict):
    """The relabel settings a set was made with (its meta), over the run's: its crops must be drawn alike."""
    from omegaconf import OmegaConf

    r = meta.get("relabel") or {}
    made = {"scale_min": r["scale"][0], "scale_max": r["scale"][1]} if "scale" in r else {}
    made |= {k: r[k] for k in ("topk", "flip") if k in r}
    return OmegaConf.merge(relabel_cfg, made)


def relabel_random(source, teacher, relabel_cfg, flip: bool, seed: int, progress: bool = False):
    """DD-Ranking's soft-label protocol: (images, run k) -> a source of the same kind as `source` for random
    subset k, labelled by the same teacher (stored: its own crops from the stream ("robust_relabel", seed, k, e))."""
    if isinstance(source, TeacherLabels):
        return lambda images, run: source

    def stored(images: torch.Tensor, run: int) -> StoredLabels:
        epochs = source.store.epochs
        store = generate(teacher, images, epochs, relabel_cfg, flip, seed, progress, stream=("robust_relabel", run))
        return StoredLabels(store, source.temperature)
    return stored


def storage(images: torch.Tensor, labels: torch.Tensor, store: LabelStore | None) -> dict:
    """Bytes of the images (float32, as exported) and of the labels a student needs (stored soft labels, else
    the label tensor): soft labels can outweigh the images many times, and a fair comparison says so."""
    images_bytes = images.numel() * 4
    labels_bytes = store.nbytes() if store is not None else labels.numel() * labels.element_size()
    what = store.describe() if store is not None else f"{'soft' if labels.dim() == 2 else 'hard'} labels ({labels.dtype})"
    return {"images_bytes": int(images_bytes), "labels_bytes": int(labels_bytes), "labels": what,
            "ratio": labels_bytes / images_bytes}


def teacher_summary(teacher) -> dict:
    """What a set's meta records of its teacher (enough to find it again for eval.labels=teacher)."""
    keep = ("folder", "file", "dataset", "model", "recipe", "test_accuracy", "provenance")
    return {k: teacher.manifest[k] for k in keep if k in teacher.manifest}


def relabelled_set(ctx, teacher, images: torch.Tensor, labels: torch.Tensor, timings: dict | None = None):
    """The teacher-based methods' result: the images, hard labels, and every evaluation epoch's crops and
    teacher logits (relabel.epochs, default eval.epochs), with the teacher and the storage in meta."""
    cfg = ctx.cfg
    epochs = int(cfg.relabel.epochs or cfg.eval.epochs)
    t0 = time.perf_counter()
    store = generate(teacher, images, epochs, cfg.relabel, ctx.data.flip, cfg.seed, ctx.progress)
    timings = {**(timings or {}), "relabel_s": time.perf_counter() - t0}
    meta = {"teacher": teacher_summary(teacher), "storage": storage(images, labels, store),
            "relabel": {"epochs": epochs, "scale": [float(cfg.relabel.scale_min), float(cfg.relabel.scale_max)],
                        "topk": int(cfg.relabel.topk), "stream": "relabel", "seed": int(cfg.seed),
                        "flip": ctx.data.flip if cfg.relabel.flip is None else bool(cfg.relabel.flip)}}
    return SynSet(images, labels, extra_meta=meta, timings=timings, extra_tensors=store.tensors())
