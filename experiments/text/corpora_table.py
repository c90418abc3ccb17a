"""The real-corpus table: one row per text run, grouped by corpus, beside the corpus' full fine-tuning.

    python experiments/text/corpora_table.py outputs/corpora/*/*      [--json table.json]
    python experiments/text/corpora_table.py outputs/new/*/attention_labels --earlier experiments/text/results/corpora_table.json

`--earlier` adds the rows of a table written before (its --json) for every (corpus, method) that the run
folders given do not have: the baselines need not be run again when only the distillation changed.

Each argument is a dd-distill run folder (its results.json). Columns: accuracy and macro-F1 (mean ± std over
the evaluation runs), the share of runs predicting a single class, the majority-class rate of the test split,
the wall time of the whole run, and accuracy as a share of full fine-tuning's on the same corpus; the
targets of issue 20 are checked per distilled row (macro-F1 15 points above the constant predictor's and above
random's, accuracy >= 95% of full fine-tuning's, no single-class run, std <= 3 points, <= 20 minutes).
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

from dd.registry import RENAMED  # runs filed before one naming (random_text, full_finetune)
from dd.results import headline


def row_of(path: Path) -> dict:
    r = json.loads((path / "results.json").read_text())
    acc = headline(r)
    return {"run": str(path), "dataset": r["dataset"], "method": RENAMED.get(r["method"], r["method"]),
            "acc": 100 * acc["mean"], "acc_std": 100 * acc["std"], "f1": 100 * r["macro_f1"]["mean"], "f1_std": 100 * r["macro_f1"]["std"],
            "single": r["single_class_fraction"], "majority": 100 * r["majority_rate"],
            "minutes": r["timings"]["total_s"] / 60, "runs": len(acc["per_run"]),
            "label": f"{r['method']} ({path.name})"}


def constant_f1(majority: float, classes: int) -> float:
    """Macro-F1 of always predicting the majority class: its F1 over the number of classes."""
    p = majority / 100
    return 100 * (2 * p / (1 + p)) / classes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--earlier", type=Path, default=None, help="a table JSON written before: its rows fill the gaps")
    args = p.parse_args()
    by_corpus = defaultdict(list)
    for run in args.runs:
        if (run / "results.json").is_file():
            row = row_of(run)
            meta = run / "distilled" / "meta.json"
            row["classes"] = json.loads(meta.read_text())["num_classes"] if meta.is_file() else None
            by_corpus[row["dataset"]].append(row)
    if args.earlier:
        for row in json.loads(args.earlier.read_text()):
            have = {r["method"] for r in by_corpus[row["dataset"]]}
            if row["method"] not in have:
                row.pop("targets", None)
                row["label"] = row["label"].split(" (")[0] + " (earlier run)"
                by_corpus[row["dataset"]].append(row)
    out = []
    print("| corpus | method | accuracy % | macro-F1 % | single-class runs | % of full FT | minutes | targets |")
    print("|---|---|---|---|---|---|---|---|")
    for corpus, rows in by_corpus.items():
        full = next((r for r in rows if r["method"] == "full"), None)
        random = next((r for r in rows if r["method"] == "random"), None)
        classes = next((r["classes"] for r in rows if r["classes"]), None)
        const = None if classes is None else constant_f1(rows[0]["majority"], classes)
        print(f"| {corpus} | constant (majority) | {rows[0]['majority']:.1f} | "
              f"{'-' if const is None else f'{const:.1f}'} | all | - | - | |")
        for r in sorted(rows, key=lambda r: (r["method"] != "attention_labels", r["method"], r["run"])):
            share = "-" if full is None else f"{100 * r['acc'] / full['acc']:.0f}"
            checks = ""
            if r["method"] == "attention_labels":
                misses = []
                if full is not None and r["acc"] < 0.95 * full["acc"]:
                    misses.append("acc<95% full")
                if random is not None and r["f1"] < random["f1"] + 15:
                    misses.append("F1<random+15")
                if const is not None and r["f1"] < const + 15:
                    misses.append("F1<constant+15")
                if r["single"] > 0:
                    misses.append("single-class run")
                if r["acc_std"] > 3:
                    misses.append("std>3")
                if r["minutes"] > 20:
                    misses.append(">20 min")
                checks = "met" if not misses else "MISSED: " + ", ".join(misses)
                r["targets"] = checks
            print(f"| {corpus} | {r['label']} | {r['acc']:.1f} ± {r['acc_std']:.1f} | {r['f1']:.1f} ± {r['f1_std']:.1f} | "
                  f"{round(r['single'] * r['runs'])}/{r['runs']} | {share} | {r['minutes']:.1f} | {checks} |")
            out.append(r)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
