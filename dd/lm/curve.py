"""The pruning curve from run folders: held-out perplexity per method x kept fraction (mean ± std over seeds),
full data beside it, the worst domain's perplexity, and a plot of perplexity against the fraction kept.

In every column the methods whose mean is below random's at that fraction are marked `<`, so "better
than random" can be read off without arithmetic.
"""

from collections import defaultdict
from dataclasses import fields
from pathlib import Path

import numpy as np

from dd.fsutil import write_file, write_json
from dd.registry import registry
from dd.results import headline, kind_of

FULL = "full data"


def label_of(r: dict) -> str:
    """The method, with every setting that differs from its schema's default (so two recipes never share a cell);
    perplexity_band always names its band."""
    if r["method"] == "full" or (r["method"] == "random" and point_of(r) == "1"):
        return FULL
    m = r.get("config", {}).get("method", {})
    schema = registry("lm").get(r["method"]).schema
    defaults = {f.name: f.default for f in fields(schema)} if schema else {}
    diffs = [f"{k}={v}" for k, v in m.items() if k in defaults and k != "name" and v != defaults[k]]
    if r["method"] == "perplexity_band" and "band" not in "".join(diffs):
        diffs.insert(0, f"band={m.get('band', defaults.get('band'))}")
    return r["method"] + (f" ({', '.join(diffs)})" if diffs else "")


def point_of(r: dict) -> str:
    return f"n={r['budget']}" if r.get("budget") else f"{r['keep']:g}"


def collect(results: list[dict]) -> dict:
    """{dataset: {label: {point: {"ppl": [...], "worst": [...], "seconds": [...]}}}} of the lm runs."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for r in results:
        if kind_of(r) != "lm":
            continue
        cell = out[r["dataset"]][label_of(r)][point_of(r)]
        cell["ppl"].extend(headline(r)["per_run"])
        cell["worst"].append(r["worst_domain"]["perplexity"])
        t = r.get("timings", {})
        cell["seconds"].append(t.get("total_s", float("nan")))
        cell["select_s"].append(t.get("method_s", t.get("select_s", float("nan"))))  # select_s: before schema 2
        for stage in ("train_s", "evaluate_s"):
            cell[stage].append(t.get(stage, float("nan")))
    return out


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def points_of(rows: dict) -> list[str]:
    pts = {p for label, cells in rows.items() if label != FULL for p in cells}
    return sorted(pts, key=lambda p: (p.startswith("n="), float(p[2:]) if p.startswith("n=") else float(p)))


def render(curves: dict) -> str:
    lines = []
    for dataset, rows in sorted(curves.items()):
        pts = points_of(rows)
        rnd = rows.get("random", {})
        lines.append(f"**{dataset}**: test perplexity (lower is better), mean ± std over seeds; "
                     "`<` below random at that fraction\n")
        lines.append("| method | " + " | ".join(f"keep {p}" for p in pts) + " |")
        lines.append("|---|" + "---|" * len(pts))
        if FULL in rows:
            full = rows[FULL]["1"]["ppl"]
            lines.append(f"| {FULL} (keep 1.0) | " + " | ".join(fmt(full) for _ in pts) + " |")
        for label in sorted(k for k in rows if k != FULL):
            cells = []
            for p in pts:
                c = rows[label].get(p)
                if c is None:
                    cells.append("")
                    continue
                better = label != "random" and p in rnd and np.mean(c["ppl"]) < np.mean(rnd[p]["ppl"])
                cells.append(fmt(c["ppl"]) + (" <" if better else ""))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"**{dataset}**: worst domain's perplexity (mean over seeds)\n")
        lines.append("| method | " + " | ".join(f"keep {p}" for p in pts) + " |")
        lines.append("|---|" + "---|" * len(pts))
        for label in sorted(rows):
            if label == FULL:
                w = rows[FULL]["1"]["worst"]
                lines.append(f"| {FULL} | " + " | ".join(f"{np.mean(w):.2f}" for _ in pts) + " |")
                continue
            lines.append(f"| {label} | " + " | ".join(f"{np.mean(rows[label][p]['worst']):.2f}" if p in rows[label]
                                                       else "" for p in pts) + " |")
        lines.append("")
        lines.append(f"**{dataset}**: time per stage (seconds; scoring is paid by a scorer's first run, then cached)\n")
        lines.append("| method | runs | scoring (first run) | selecting (later runs, median) | training (median) | "
                     "evaluation (median) | all runs |")
        lines.append("|---|---|---|---|---|---|---|")
        for label in sorted(rows):
            cells = list(rows[label].values())
            sel = [v for c in cells for v in c["select_s"]]
            lines.append(f"| {label} | {len(sel)} | {max(sel):.0f} | {np.median(sorted(sel)[:-1] or sel):.1f} | "
                         f"{np.median([v for c in cells for v in c['train_s']]):.0f} | "
                         f"{np.median([v for c in cells for v in c['evaluate_s']]):.0f} | "
                         f"{sum(v for c in cells for v in c['seconds']):.0f} |")
        total = sum(v for cells in rows.values() for c in cells.values() for v in c["seconds"])
        lines.append(f"\nAll {sum(len(c['seconds']) for cells in rows.values() for c in cells.values())} runs: "
                     f"{total / 60:.1f} minutes of run time (process start-up not included).\n")
    return "\n".join(lines) + "\n"


def as_json(curves: dict) -> dict:
    return {d: {label: {p: {"mean": float(np.mean(c["ppl"])), "std": float(np.std(c["ppl"])), "n": len(c["ppl"]),
                            "worst_domain_mean": float(np.mean(c["worst"])), "seconds": c["seconds"]}
                        for p, c in cells.items()} for label, cells in rows.items()} for d, rows in curves.items()}


def plot(curves: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], sorted(curves.items()), strict=True):
        for label in sorted(k for k in rows if k != FULL):
            pts = [p for p in points_of(rows) if p in rows[label] and not p.startswith("n=")]
            if not pts:
                continue
            x = [float(p) for p in pts]
            y = [np.mean(rows[label][p]["ppl"]) for p in pts]
            e = [np.std(rows[label][p]["ppl"]) for p in pts]
            style = {"color": "black", "linestyle": ":"} if label == "random" else {}
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label, **style)
        if FULL in rows:
            ax.axhline(np.mean(rows[FULL]["1"]["ppl"]), color="grey", linestyle="--", label=FULL)
        ax.set_xlabel("fraction of training documents kept")
        ax.set_ylabel("held-out perplexity")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_file(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


def write_outputs(curves: dict, plot_path: str | None, json_path: str | None) -> None:
    if plot_path:
        plot(curves, plot_path)
    if json_path:
        write_json(json_path, as_json(curves))
