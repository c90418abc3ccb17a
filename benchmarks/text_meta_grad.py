"""Time and peak memory of attention-label outer steps, per meta-gradient engine and number of inner steps.

One outer step is what `dd.text.methods.attention_labels` does: a fresh head on the pretrained body,
`inner_steps` SGD steps on the distilled batches (CE + attention KL), CE on a real batch, the
meta-gradient from `dd.inner.meta_gradient`. Data: the synthetic topic task; distilled set:
random N(0,1) embeddings, unrestricted labels, [CLS] attention labels, 1 example per class
per inner step (ipc = inner_steps, so each step sees new examples).

Every configuration runs in a fresh child process, since the peak RSS (getrusage ru_maxrss)
only grows; the reported memory is the peak minus the RSS after setup. `reverse` should stay
flat in inner_steps while `unroll` grows.

    python benchmarks/text_meta_grad.py                      # MiniLM, unroll/reverse x 1,2,4
    python benchmarks/text_meta_grad.py --model tiny_bert --steps 1,2,4,8 --iters 3
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> dict:
    import torch
    from omegaconf import OmegaConf

    from dd.config import TextDatasetConfig, TextModelConfig
    from dd.data.text import load_text_dataset
    from dd.inner import meta_gradient
    from dd.models.bert import TextClassifier, load_backbone
    from dd.text.evaluate import batches
    from dd.text.methods.attention_labels import AttentionLabelsConfig, Distilled

    torch.set_num_threads(args.threads)
    backbone = load_backbone(OmegaConf.structured(TextModelConfig(name=args.model)))
    data = load_text_dataset(OmegaConf.structured(TextDatasetConfig(name="synthetic_topics", max_length=args.length)),
                             backbone.tokenizer)
    clf = TextClassifier(backbone, data.num_classes)
    m = OmegaConf.structured(AttentionLabelsConfig(inner_steps=args.inner_steps))
    syn = Distilled(clf, data, m, args.inner_steps, torch.Generator().manual_seed(0), torch.device("cpu"))
    ids, mask, types, labels = next(batches(data.train, args.real_batch, "cpu"))

    def outer(theta):
        logits, _ = clf(theta, clf.embed(ids), mask, types)
        return torch.nn.functional.cross_entropy(logits, labels)

    def one():
        theta0 = clf.new_theta(torch.Generator().manual_seed(0))
        return meta_gradient(args.engine, lambda th, learn, i: syn.step_loss(clf, learn, th, i), outer, theta0,
                             syn.learnables(), syn.lr().detach().requires_grad_(True), args.inner_steps)

    base = rss_mb()
    one()  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.iters):
        one()
    return {"model": args.model, "engine": args.engine, "inner_steps": args.inner_steps,
            "s_per_outer_step": (time.perf_counter() - t0) / args.iters, "peak_rss_mb": rss_mb(),
            "peak_rss_delta_mb": rss_mb() - base, "threads": args.threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--engine", default="unroll,reverse")
    p.add_argument("--steps", default="1,2,4")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--real-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--inner-steps", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    for engine in args.engine.split(","):
        for steps in map(int, args.steps.split(",")):
            cmd = [sys.executable, __file__, "--child", "--engine", engine, "--inner-steps", str(steps),
                   "--model", args.model, "--iters", str(args.iters), "--length", str(args.length),
                   "--real-batch", str(args.real_batch), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            row = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {
                "engine": engine, "inner_steps": steps, "error": out.stderr.strip().splitlines()[-1:]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'engine':8} {'steps':>5} {'s/step':>8} {'peak RSS MB':>12} {'delta MB':>9}")
    for r in rows:
        if "error" not in r:
            print(f"{r['engine']:8} {r['inner_steps']:>5} {r['s_per_outer_step']:>8.2f} {r['peak_rss_mb']:>12.0f} "
                  f"{r['peak_rss_delta_mb']:>9.0f}")


if __name__ == "__main__":
    main()
