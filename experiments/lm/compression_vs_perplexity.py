"""Entropy Law's claim on our curve: does a kept set's compression ratio track the perplexity it trains to?

For every pruning run under the given folders: the zlib compression ratio of its kept documents
(concatenated, one per line; original bytes over compressed bytes, level 9) beside its test perplexity,
then per kept fraction the Spearman correlation between the two across methods and seeds.

    python experiments/lm/compression_vs_perplexity.py outputs/lm_curve [--json out.json]
"""

import argparse
import json
import zlib
from collections import defaultdict
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from dd.fsutil import write_json
from dd.lm.curve import label_of, point_of
from dd.results import headline, kind_of


def ratio(texts: list[str]) -> float:
    blob = "\n".join(texts).encode("utf-8")
    return len(blob) / len(zlib.compress(blob, 9))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    for f in sorted(f for path in args.paths for f in Path(path).rglob("results.json")):
        r = json.loads(f.read_text())
        kept = f.parent / "kept" / "kept.parquet"
        if kind_of(r) != "lm" or not kept.exists():
            continue
        rows.append({"label": label_of(r), "keep": point_of(r), "seed": r["seed"],
                     "ratio": ratio(pd.read_parquet(kept)["text"].tolist()), "perplexity": headline(r)["mean"]})
    by_keep = defaultdict(list)
    for row in rows:
        by_keep[row["keep"]].append(row)
    print("| keep | runs | Spearman(compression ratio, perplexity) | ratio range | perplexity range |")
    print("|---|---|---|---|---|")
    out = {}
    for keep, group in sorted(by_keep.items()):
        if len(group) < 3:
            continue
        rho = spearmanr([g["ratio"] for g in group], [g["perplexity"] for g in group]).statistic
        out[keep] = {"spearman": float(rho), "runs": group}
        print(f"| {keep} | {len(group)} | {rho:+.2f} | {min(g['ratio'] for g in group):.3f}-{max(g['ratio'] for g in group):.3f} "
              f"| {min(g['perplexity'] for g in group):.1f}-{max(g['perplexity'] for g in group):.1f} |")
    means = defaultdict(list)
    for row in rows:
        means[(row["label"], row["keep"])].append(row)
    print("\nper method (mean over seeds): compression ratio of the kept set / perplexity")
    for (label, keep), group in sorted(means.items()):
        print(f"  {label:24s} keep {keep:>4s}: ratio {sum(g['ratio'] for g in group) / len(group):.3f}  "
              f"perplexity {sum(g['perplexity'] for g in group) / len(group):.1f}")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
