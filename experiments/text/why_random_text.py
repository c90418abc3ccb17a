"""Why one random real example per class, one SGD step, scores near or below the majority rate.

Trains learners on ipc=1 random real examples (hard labels) for one step at several lrs, three ways:
  random_head  the protocol every set is scored under: a fresh N(0, 0.02) head, body and head stepped
  zero_head    an all-zero head: the body gets no gradient and the step makes a nearest-class-mean classifier
  head_only    a fresh random head, only the head stepped (the body stays pretrained)
and prints test accuracy and macro-F1 (mean ± std over draws of the examples).

    python experiments/text/why_random_text.py dataset=fortunes --draws 5
"""

import argparse

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from dd import seeds
from dd.cli.common import CONF_DIR
from dd.config import register_configs
from dd.data.text import load_text_dataset
from dd.models.bert import TextClassifier, load_backbone
from dd.text.evaluate import TextSet, score, train_steps
from dd.text.methods.baselines import random_examples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=fortunes")
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--lrs", default="0.03,0.3,3,30")
    p.add_argument("--batch-size", type=int, default=512, help="test batch size")
    args = p.parse_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=minilm", "method=random", "ipc=1", *args.overrides])
    backbone = load_backbone(cfg.model)
    data = load_text_dataset(cfg.dataset, backbone.tokenizer)
    clf = TextClassifier(backbone, data.num_classes)
    head = slice(clf.numel - clf.head_numel, None)
    pool = torch.arange(len(data.train))
    for variant in ("random_head", "zero_head", "head_only"):
        for lr in map(float, args.lrs.split(",")):
            accs, f1s, single = [], [], []
            for draw in range(args.draws):
                real = data.train.subset(random_examples(data, 1, pool, seeds.generator("diag", cfg.seed, draw)))
                tset = TextSet(inputs_embeds=clf.embed(real.input_ids), attention_mask=real.attention_mask,
                               token_type_ids=real.token_type_ids, targets=real.labels, lr=torch.tensor([lr]),
                               num_classes=data.num_classes)
                theta = clf.new_theta(seeds.generator("text_eval_head", cfg.seed, 0, draw))
                if variant == "zero_head":
                    theta[head] = 0
                stepped = train_steps(clf, theta, tset)
                if variant == "head_only":  # keep the pretrained body, take the stepped head
                    stepped = torch.cat([clf.body_part(theta), stepped[head]])
                s = score(clf, stepped, data.test, args.batch_size)
                accs.append(s["accuracy"])
                f1s.append(s["macro_f1"])
                single.append(s["single_class"])
            print(f"{variant:12s} lr={lr:<6g} accuracy {100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f}  "
                  f"macro-F1 {100 * np.mean(f1s):.1f}  single-class runs {np.mean(single):.0%}", flush=True)


if __name__ == "__main__":
    main()
