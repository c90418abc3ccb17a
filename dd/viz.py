"""Pictures of distilled sets: one row per class, class names on the rows."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dd import dist  # noqa: E402
from dd.fsutil import write_file  # noqa: E402


def save_grid(pixels: torch.Tensor, labels: torch.Tensor, class_names: list[str], path: str | Path,
              max_per_class: int = 10, title: str | None = None) -> None:
    """pixels: (N,C,H,W) in [0,1]; labels: hard (N,) or soft (N,classes). Drawn by rank 0 of a job only.

    One picture: the images tiled into one canvas (a row per class, its name on the left), drawn as one image
    (a grid of subplots looks the same and takes five times as long, at every evaluation round)."""
    if not dist.is_main():
        return
    pixels = pixels.detach().cpu().clamp(0, 1)
    hard = labels.argmax(1) if labels.dim() == 2 else labels
    rows = [(c, (hard == c).nonzero().flatten()[:max_per_class]) for c in range(len(class_names))]
    rows = [(c, idx) for c, idx in rows if len(idx)]
    cols = max(len(idx) for _, idx in rows)
    channels, h, w = pixels.shape[1:]
    gap = max(1, h // 16)  # white space between images
    canvas = torch.ones(len(rows) * (h + gap) - gap, cols * (w + gap) - gap, channels)
    for r, (_, idx) in enumerate(rows):
        for j, i in enumerate(idx.tolist()):
            canvas[r * (h + gap):r * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = pixels[i].permute(1, 2, 0)
    width = max(cols * 0.9 + 1.2, 4.5 if title else 0)  # room for the title over narrow (ipc=1) grids
    height = len(rows) * 0.9 + 0.4
    fig = plt.figure(figsize=(width, height))
    top = 1 - (0.35 if title else 0.05) / height
    ax = fig.add_axes((0.8 / width, 0.05 / height, 1 - 0.85 / width, top - 0.05 / height))
    img = canvas.numpy()
    ax.imshow(img.squeeze(-1) if channels == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(len(rows))], [str(class_names[c]) for c, _ in rows],
                  fontsize=8)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    write_file(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)


def save_curves(history: list[dict], path: str | Path, title: str | None = None) -> None:
    """Matching loss per iteration and test accuracy at each evaluation, on two panels."""
    if not dist.is_main():  # rank 0 of a job draws
        return
    losses = [(h["iteration"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["iteration"], 100 * h["acc_mean"], 100 * h["acc_std"]) for h in history if "acc_mean" in h]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    if losses:
        its, vals = zip(*losses)
        a.plot(its, vals, lw=0.6, alpha=0.4, label="per iteration")
        window = max(1, len(vals) // 20)  # the loss is noisy: draw a running mean over it
        if window > 1:
            smooth = torch.tensor(vals).unfold(0, window, 1).mean(1).tolist()
            a.plot(its[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
            a.legend(fontsize=7)
    a.set_xlabel("iteration")
    a.set_ylabel("matching loss")
    a.grid(alpha=0.3)
    if evals:
        it, mean, std = zip(*evals)
        b.errorbar(it, mean, yerr=std, marker="o", capsize=3)
    b.set_xlabel("iteration")
    b.set_ylabel("test accuracy (%)")
    b.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_file(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
