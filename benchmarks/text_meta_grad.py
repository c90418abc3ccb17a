"""Time and peak memory of attention-label outer steps, per meta-gradient engine and number of inner steps.

One outer step is the attention-labels method's own `dd.text.methods.attention_labels.outer_step`
(what `distill` calls): a fresh head on the pretrained body, `inner_steps` SGD steps on the
distilled batches (CE + attention KL), CE on a real batch, the meta-gradient from
`dd.inner.meta_gradient`. The distilled set and the head come from the method's seeded streams
(`dd.seeds`: "distill", "text_train_head", seed 0). Data: the synthetic topic task; distilled set:
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
import sys
import time

if __package__:
    from . import common
else:  # run as a script: benchmarks/ is sys.path[0]
    import common


def child(args) -> dict:
    torch = common.setup_torch("cpu", args.threads)
    from omegaconf import OmegaConf

    from dd import seeds
    from dd.data.text import TextDatasetConfig, load_text_dataset
    from dd.models.bert import TextClassifier, TextModelConfig, load_backbone
    from dd.text.evaluate import batches
    from dd.text.methods.attention_labels import AttentionLabelsConfig, Distilled, outer_step

    engine = args.engine[0]
    backbone = load_backbone(OmegaConf.structured(TextModelConfig(name=args.model)))
    data = load_text_dataset(OmegaConf.structured(TextDatasetConfig(name="synthetic_topics", max_length=args.length)),
                             backbone.tokenizer)
    clf = TextClassifier(backbone, data.num_classes)
    m = OmegaConf.structured(AttentionLabelsConfig(inner_steps=args.inner_steps))
    syn = Distilled(clf, data, m, args.inner_steps, seeds.generator("distill", 0), torch.device("cpu"))
    batch = next(batches(data.train, args.real_batch, "cpu"))

    def one():
        theta0 = clf.new_theta(seeds.generator("text_train_head", 0, 0))
        return outer_step(clf, syn, batch, theta0, engine, args.inner_steps)

    base = common.peak_rss_mb()
    one()  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.iters):
        one()
    return {"model": args.model, "engine": engine, "inner_steps": args.inner_steps,
            "s_per_outer_step": (time.perf_counter() - t0) / args.iters, "peak_rss_mb": common.peak_rss_mb(),
            "peak_rss_delta_mb": common.peak_rss_mb() - base, "threads": args.threads}


def main() -> None:
    common.ensure_root_on_path()
    from dd.inner import ENGINES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--engine", type=common.choice_list(ENGINES), default="unroll,reverse")
    p.add_argument("--steps", type=common.int_list, default="1,2,4")
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
    for engine in args.engine:
        for steps in args.steps:
            argv = [__file__, "--child", "--engine", engine, "--inner-steps", str(steps),
                    "--model", args.model, "--iters", str(args.iters), "--length", str(args.length),
                    "--real-batch", str(args.real_batch), "--threads", str(args.threads)]
            row, proc = common.run_child(argv, HF_HUB_OFFLINE="1")
            if proc.returncode != 0 or row is None:
                row = {"engine": engine, "inner_steps": steps, "error": proc.stderr.strip().splitlines()[-1:]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'engine':8} {'steps':>5} {'s/step':>8} {'peak RSS MB':>12} {'delta MB':>9}")
    for r in rows:
        if "error" not in r:
            print(f"{r['engine']:8} {r['inner_steps']:>5} {r['s_per_outer_step']:>8.2f} {r['peak_rss_mb']:>12.0f} "
                  f"{r['peak_rss_delta_mb']:>9.0f}")


if __name__ == "__main__":
    sys.exit(main())
