"""A second opinion on a distilled digits set: an evaluator that shares no code with ddlab.

It reads the exported folder with safetensors and json only, rebuilds the digits test split from
scikit-learn, writes its own ConvNet (conv3x3 -> instance norm -> ReLU -> 2x2 average pool, then a
linear layer, the reference trajectory-matching architecture), augments with kornia's random
affine/erasing transforms plus a hand-written brightness/contrast jitter (one per batch, as the
reference's DSA 'S' mode picks), and trains with the reference evaluate_synset schedule:
epochs+1 epochs of SGD (momentum 0.9, weight decay 5e-4, batch 256) at the set's learned lr, lr x0.1
and a fresh optimiser after epoch epochs//2+1. Seeds are its own (torch.manual_seed(10_000 + k)).

    python experiments/digits/independent_eval.py outputs/demo/mtt/distilled --models 5 --epochs 300
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from kornia.augmentation import RandomAffine, RandomErasing
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import nn


def digits_test_split(meta: dict, tensors: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The last 297 digits, 8x8 -> 16x16 bilinear, put in the space the set lives in."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)[1500:]
    y = torch.tensor(d.target[1500:], dtype=torch.int64)
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    x = (x - mean) / std
    if meta.get("zca"):
        flat = x.reshape(len(x), -1)
        x = ((flat - tensors["zca_mean"]) @ tensors["zca_matrix"]).reshape(x.shape)
    return x, y


class ReferenceConvNet(nn.Module):
    def __init__(self, channels: int, classes: int, width: int, depth: int, size: int):
        super().__init__()
        blocks = []
        for d in range(depth):
            blocks += [nn.Conv2d(channels if d == 0 else width, width, 3, padding=1),
                       nn.GroupNorm(width, width), nn.ReLU(), nn.AvgPool2d(2)]
            size //= 2
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width * size * size, classes)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def jitter(x: torch.Tensor) -> torch.Tensor:
    n = len(x)
    x = x + (torch.rand(n, 1, 1, 1) - 0.5)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (0.5 + torch.rand(n, 1, 1, 1)) + m


AUGMENTATIONS = [
    jitter,
    RandomAffine(degrees=0.0, translate=(0.125, 0.125), p=1.0),
    RandomErasing(scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0.0, p=1.0),
    RandomAffine(degrees=0.0, scale=(1 / 1.2, 1.2), p=1.0),
    RandomAffine(degrees=15.0, p=1.0),
]  # no flip: digits are not mirror-symmetric


def train_one(images, labels, lr, epochs, width, depth, seed) -> nn.Module:
    torch.manual_seed(seed)
    net = ReferenceConvNet(images.shape[1], 10, width, depth, images.shape[-1])
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    for ep in range(epochs + 1):
        for idx in torch.randperm(len(images)).split(256):
            aug = AUGMENTATIONS[int(torch.randint(len(AUGMENTATIONS), (1,)))]
            out = net(aug(images[idx]))
            y = labels[idx]
            loss = -(y * out.log_softmax(1)).sum(1).mean() if y.dim() == 2 else F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ep == epochs // 2 + 1:
            lr *= 0.1
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    return net


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set", type=Path, help="an exported ddlab set folder (data.safetensors + meta.json)")
    p.add_argument("--models", type=int, default=5)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=None, help="default: the set's learned lr, else 0.01")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    meta = json.loads((args.set / "meta.json").read_text())
    if meta.get("dataset") != "digits":
        sys.exit(f"independent_eval: {args.set} holds a '{meta.get('dataset')}' set; this evaluator knows digits only")
    tensors = load_file(str(args.set / "data.safetensors"))
    images, labels = tensors["images"].float(), tensors["labels"]
    lr = args.lr if args.lr is not None else float(tensors["lr"].reshape(-1)[-1]) if "lr" in tensors else 0.01
    model = meta.get("model") or {}
    width, depth = int(model.get("width") or 128), int(model.get("depth") or 2)
    test_x, test_y = digits_test_split(meta, tensors)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    accs = []
    for k in range(args.models):
        net = train_one(images, labels, lr, args.epochs, width, depth, seed=10_000 + k).eval()
        with torch.no_grad():
            accs.append(float((net(test_x).argmax(1) == test_y).float().mean()))
        print(f"model {k}: {100 * accs[-1]:.2f}%", flush=True)
    result = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "per_model": accs, "lr": lr,
              "epochs": args.epochs + 1, "evaluator": "experiments/digits/independent_eval.py"}
    print(f"independent evaluator: {100 * result['mean']:.2f} ± {100 * result['std']:.2f}% over {args.models} models")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
