"""dd-table: the paper table (mean ± std per method x dataset-IPC) from run or multirun folders.

    dd-table multirun/2026-11-22/10-00-00 --format md --reference experiments/digits/published.yaml --plot acc.png
    dd-table outputs/lm_curve --plot curve.png --json curve.json      # language-model pruning: the perplexity curve
"""

import argparse
from pathlib import Path

from dd.cli.common import guarded, version_line
from dd.errors import DDError
from dd.table import CAPTIONS, STATS, collect, find_results, load_reference, plot, render

PROG = "dd-table"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=version_line(PROG))
    p.add_argument("paths", nargs="+", help="run or multirun folders (searched for results.json)")
    p.add_argument("--format", default="md", choices=["md", "csv", "latex"])
    p.add_argument("--reference", help="published.yaml with the paper's figures")
    p.add_argument("--by-model", action="store_true", help="one row per method x model (cross-architecture)")
    p.add_argument("--plot", help="write accuracy-vs-IPC (pruning runs: perplexity-vs-fraction kept) per method to this PNG")
    p.add_argument("--json", help="pruning runs: write the curve's cells to this JSON file")
    p.add_argument("--stat", default="accuracy", choices=STATS,
                   help="accuracy: fresh models on the exported set (default); paper_max: the reference code's "
                        "figure, the best evaluation during distillation, picked on the test split")
    args = p.parse_args(argv)

    def go():
        results = find_results(args.paths)
        if not results:
            raise DDError(f"no results.json found under {', '.join(args.paths)}")
        if any(r.get("kind") == "lm" for r in results):  # language-model pruning: perplexity, not accuracy
            from dd.lm import curve

            curves = curve.collect(results)
            print(curve.render(curves), end="")
            results = [r for r in results if r.get("kind") != "lm"]
            plot_path = args.plot
            if plot_path and results:  # the accuracy plot of the other runs takes --plot
                plot_path = str(Path(plot_path).with_name(Path(plot_path).stem + "_lm.png"))
            curve.write_outputs(curves, plot_path, args.json)
            if not results:
                return
        cells = collect(results, by_model=args.by_model, stat=args.stat)
        ref = load_reference(args.reference) if args.reference else None
        if args.stat != "accuracy" and args.format == "md":
            print(f"Statistic: {CAPTIONS[args.stat]}.\n")
        print(render(cells, args.format, ref), end="")
        if args.plot:
            plot(cells, args.plot)
            print(f"plot written to {args.plot}")

    guarded(PROG, go)


if __name__ == "__main__":
    main()
