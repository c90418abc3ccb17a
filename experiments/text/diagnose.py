"""What a text distillation run on a real corpus learned, and what it could have learned.

For a corpus (Hydra overrides, as dd-distill takes them) this prints:
  prior        the class shares of the training split, and the outer loss a set earns by teaching the
               prior alone: the entropy of the shares (proportional real batches) or log(classes) (balanced)
  frozen       what the pretrained features allow: a linear probe (logistic regression on the frozen
               mean-pooled states, all training data) and a nearest-class-mean classifier on them
  runs         for each run folder given with --run: its outer loss (first and last 10 steps) against the
               prior's, the learned labels' mean (the prior they carry), and, re-training its exported set
               under the evaluation protocol, the share of test predictions per class beside the truth
               and the per-class recall

    python experiments/text/diagnose.py dataset=rotten_tomatoes --run outputs/rt_attn
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from dd import seeds
from dd.cli.common import CONF_DIR
from dd.config import register_configs
from dd.data.text import load_text_dataset
from dd.export import load
from dd.models.bert import TextClassifier, load_backbone
from dd.text.evaluate import TextSet, batches, macro_f1, predict, train_steps


@torch.no_grad()
def features(clf, split, batch_size: int = 256) -> torch.Tensor:
    """Frozen mean-pooled final states of every example (the pooling model=minilm reads)."""
    out = []
    for ids, mask, types, _ in batches(split, batch_size, "cpu"):
        states = clf.module.body(inputs_embeds=clf.embed(ids), attention_mask=clf.module.body_mask(mask, torch.float32),
                                 token_type_ids=types).last_hidden_state
        w = mask.unsqueeze(-1).float()
        out.append((states * w).sum(1) / w.sum(1).clamp_min(1.0))
    return torch.cat(out)


def linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-3) -> torch.Tensor:
    """Multinomial logistic regression (L-BFGS, standardised features); returns a predict function's weights."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = torch.cat([(x - mu) / sd, torch.ones(len(x), 1)], 1)
    w = torch.zeros(z.shape[1], classes, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda q: (torch.cat([(q - mu) / sd, torch.ones(len(q), 1)], 1) @ w.detach()).argmax(1)


def report(name: str, preds: torch.Tensor, labels: torch.Tensor, classes: int) -> None:
    acc = float((preds == labels).float().mean())
    print(f"  {name:34s} accuracy {100 * acc:5.1f}  macro-F1 {100 * macro_f1(preds, labels, classes):5.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=rotten_tomatoes")
    p.add_argument("--run", action="append", default=[], help="a dd-distill run folder (repeatable)")
    p.add_argument("--models", type=int, default=10, help="learners re-trained per run (default 10)")
    args = p.parse_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=minilm", "method=attention_labels", *args.overrides])
    backbone = load_backbone(cfg.model)
    data = load_text_dataset(cfg.dataset, backbone.tokenizer)
    clf = TextClassifier(backbone, data.num_classes)
    c = data.num_classes
    shares = torch.bincount(data.train.labels, minlength=c).double() / len(data.train)
    test_shares = torch.bincount(data.test.labels, minlength=c).double() / len(data.test)
    prior_loss = float(-(shares * shares.log()).sum())
    print(f"{data.name}: {c} classes {data.class_names}, {len(data.train)} train / {len(data.test)} test")
    print("prior")
    print(f"  train shares {[round(float(s), 3) for s in shares]}, test shares {[round(float(s), 3) for s in test_shares]}")
    print(f"  outer loss of the prior alone: {prior_loss:.3f} (proportional batches), {math.log(c):.3f} (balanced)")

    print("frozen features (mean-pooled MiniLM)")
    xtr, xte = features(clf, data.train), features(clf, data.test)
    ytr, yte = data.train.labels, data.test.labels
    report("linear probe (logistic, all train)", linear_probe(xtr, ytr, c)(xte), yte, c)
    means = torch.stack([F.normalize(xtr[ytr == k], dim=1).mean(0) for k in range(c)])
    report("nearest class mean (cosine)", (F.normalize(xte, dim=1) @ F.normalize(means, dim=1).T).argmax(1), yte, c)
    report("constant (majority of train)", torch.full_like(yte, int(shares.argmax())), yte, c)

    for run in args.run:
        run = Path(run)
        res = json.loads((run / "results.json").read_text())
        info = res.get("method_info", {})
        print(f"run {run} ({res['method']}): accuracy {100 * res['accuracy']['mean']:.1f} ± "
              f"{100 * res['accuracy']['std']:.1f}, macro-F1 {100 * res['macro_f1']['mean']:.1f}")
        if info.get("outer_loss_first"):
            print(f"  outer loss: first 10 steps {np.mean(info['outer_loss_first']):.3f}, last 10 "
                  f"{np.mean(info['outer_loss_last']):.3f}; the prior alone earns {prior_loss:.3f} (proportional), "
                  f"{math.log(c):.3f} (balanced); outer batches: {res['config']['method'].get('outer_batches', 'proportional')}")
        t = load(run / "distilled").tensors
        labels = t["labels"]
        if labels.is_floating_point():
            mean = F.softmax(labels, 1).mean(0) if labels.dim() == 2 else None
            if mean is not None:
                print(f"  learned labels: mean softmax {[round(float(v), 3) for v in mean]} (uniform {1 / c:.3f})")
        tset = TextSet(t["inputs_embeds"], t["attention_mask"], t["token_type_ids"], labels, t["lr"], num_classes=c,
                       attention_labels=t.get("attention_labels"))
        counts = torch.zeros(c)
        recall = torch.zeros(c)
        for k in range(args.models):
            theta = train_steps(clf, clf.new_theta(seeds.generator("text_eval_head", cfg.seed, 0, k)), tset)
            preds = predict(clf, theta, data.test)
            counts += torch.bincount(preds, minlength=c).float()
            recall += torch.tensor([float((preds[yte == j] == j).float().mean()) for j in range(c)])
        print(f"  predicted shares {[round(float(v), 3) for v in counts / counts.sum()]} "
              f"(truth {[round(float(s), 3) for s in test_shares]})")
        print(f"  per-class recall {[round(float(v), 3) for v in recall / args.models]}")


if __name__ == "__main__":
    main()
