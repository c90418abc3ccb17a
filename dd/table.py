"""Paper-style tables from run folders: mean ± std per method x dataset-IPC cell.

A cell pools the per-model test accuracies of every run (seed) that landed in
it, so its std is the spread over all evaluated models, as the papers report,
and `n` counts the runs. Published figures sit beside ours when given.

Runs of one method whose method settings differ (a Hydra sweep) get one row per setting, labelled
by the settings that differ; in each column the row with the best mean is marked *.
That pick is made on the test split, as the reference READMEs pick their published figure from a
sweep, and the table says so.

When runs carry DD-Ranking's robust scores (dd-eval eval.protocol=robust), each dataset-IPC column
gets two more, LRS and ARS: mean ± std over the runs' per-run scores, pooled like the accuracies.

A cell whose runs picked their set (or its lr) on the test split (results.json `selection.split` test:
the reference code's selection rounds, method.select=test) is marked †; runs that picked on held-out
training images (method.select=val) or picked nothing are not. When runs carry a `storage` block
(sets with stored soft labels), the column gets a "labels/images" column beside it: the labels' bytes,
the images' bytes and their ratio, means over the cell's runs.
"""

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from dd.errors import DDError
from dd.results import headline

FULL = "full"
# accuracy: fresh models on the exported set (what ddlab reports).
# paper_max: the reference code's figure, the best selection round during distillation, picked on the
# test split; runs without selection rounds (coresets, full data) contribute their accuracy.
STATS = ("accuracy", "paper_max")
CAPTIONS = {
    "accuracy": "accuracy of fresh models on the exported set (mean ± std over models)",
    "paper_max": "paper_max: best mean over the evaluations made during distillation, PICKED ON THE TEST SPLIT "
                 "(the reference code's statistic); runs without such evaluations show their accuracy",
}


ROBUST_SCORES = ("lrs", "ars")
ROBUST_CAPTION = ("LRS, ARS: DD-Ranking's label- and augmentation-robust scores (dd-eval eval.protocol=robust), "
                  "from accuracies as fractions, so in [0, 1]; mean ± std over runs, n = robust runs. "
                  "DD-Ranking's own code passes percentages: its published scores are not on this scale")

TEST_PICK_MARK = "†"
TEST_PICK_CAPTION = (f"{TEST_PICK_MARK} these runs picked their set (or its lr) on the test split (selection rounds "
                     "scored on the test split, as the reference code does; method.select=test): the figure PEEKED AT "
                     "THE SPLIT IT REPORTS. method.select=val picks on held-out training images instead")
STORAGE_CAPTION = ("labels/images: the bytes of the stored soft labels beside the images' bytes (means over the "
                   "cell's runs; the ratio is labels over images)")

SELECTED_MARK = "*"
SELECTED_CAPTION = (f"{SELECTED_MARK} selected: the best row of its sweep in that column by mean test accuracy "
                    "(the reference's protocol for a published figure; this choice PEEKS AT THE TEST SPLIT)")


@dataclass
class Cell:
    accs: list[float] = field(default_factory=list)
    runs: int = 0
    sweep: str | None = None  # the method (row) this cell is one setting of, when its runs came from a sweep
    # per-run robust scores (runs of dd-eval eval.protocol=robust only), pooled like accs
    robust: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in ROBUST_SCORES})
    robust_runs: int = 0
    test_picked: int = 0  # runs that picked their set (or lr) on the test split
    storage: list[dict] = field(default_factory=list)  # the runs' `storage` blocks (sets with stored soft labels)

    @property
    def mean(self) -> float:
        return 100 * float(np.mean(self.accs))

    @property
    def std(self) -> float:
        return 100 * float(np.std(self.accs))


def find_results(paths: list[str | Path]) -> list[dict]:
    found = []
    for p in map(Path, paths):
        if not p.exists():
            raise DDError(f"{p} does not exist; give run or multirun folders that hold results.json files")
        files = [p] if p.is_file() else sorted(p.rglob("results.json"))
        for f in files:
            try:
                found.append(json.loads(f.read_text()))
            except json.JSONDecodeError:
                raise DDError(f"{f} is not valid JSON") from None
    return found


def flat_settings(tree, prefix: str = "method") -> dict[str, str]:
    """{"method.a.b": value as text} for every leaf of a run's method config."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in flat_settings(sub, f"{prefix}.{key}").items()}
    return {prefix: json.dumps(tree) if isinstance(tree, list | dict) else str(tree)}


def sweep_labels(results: list[dict], base_rows: list[str]) -> list[str | None]:
    """Per run, the method settings that set it apart from the other runs of its row in its column
    ("k=v, ..."), or None when they all share the settings (seeds pool into one cell)."""
    settings = [flat_settings((r.get("config") or {}).get("method") or {}) for r in results]
    groups = [(b, r["dataset"], r.get("ipc")) for r, b in zip(results, base_rows)]
    labels: list[str | None] = [None] * len(results)
    for group in set(groups):
        # dd-eval runs (no method config: they evaluate a set made elsewhere) take no part in a sweep
        members = [i for i, g in enumerate(groups) if g == group and (results[i].get("config") or {}).get("method")]
        keys = sorted({k for i in members for k in settings[i]})
        varying = [k for k in keys if len({settings[i].get(k) for i in members}) > 1]
        for i in members:
            if varying:
                labels[i] = ", ".join(f"{k.removeprefix('method.')}={settings[i].get(k)}" for k in varying)
    return labels


def selection_split(r: dict) -> str | None:
    """The split a run picked its set (or lr) on: results.json's `selection.split` (null: no pick); for runs
    recorded before that block, test where they had selection rounds (paper_max; DC's method.select=best) or
    say so (text: selected_on_test_split), else None."""
    if "selection" in r:
        return (r["selection"] or {}).get("split")
    legacy = (r.get("config") or {}).get("method") or {}
    if "paper_max" in r or r.get("selected_on_test_split") or legacy.get("select") == "best":
        return "test"
    return None


def collect(results: list[dict], by_model: bool = False, stat: str = "accuracy") -> dict[tuple, Cell]:
    """{(row, dataset, ipc): Cell}; row is the method (plus the model when by_model, plus the swept settings
    when the method's runs differ in them); stat is one of STATS."""
    if stat not in STATS:
        raise DDError(f"statistic '{stat}' is unknown; choose one of: {', '.join(STATS)}")
    cells: dict[tuple, Cell] = defaultdict(Cell)
    base_rows = [f"{r['method']} ({r['model']})" if by_model else r["method"] for r in results]
    # students trained on a teacher's labels are another row than the same set on its own labels
    base_rows = [f"{b} [{lab} labels]" if (lab := (r.get("eval") or {}).get("labels")) in ("stored", "teacher") else b
                 for b, r in zip(base_rows, results)]
    for r, base, label in zip(results, base_rows, sweep_labels(results, base_rows)):
        row = base if label is None else f"{base} [{label}]"
        # the full-data row does not depend on ipc: one cell shown under every ipc of its dataset
        ipc = None if r["method"] == FULL else int(r["ipc"])
        cell = cells[(row, r["dataset"], ipc)]
        cell.sweep = None if label is None else base
        if stat == "paper_max" and "paper_max" in r:
            cell.accs.extend(r["paper_max"]["per_model"])
        else:
            cell.accs.extend(headline(r)["per_run"])
        cell.runs += 1
        cell.test_picked += selection_split(r) == "test"
        if r.get("storage"):
            cell.storage.append(r["storage"])
        if "robust" in r:
            for score in ROBUST_SCORES:  # ARS is not defined for sets trained on a teacher's labels
                cell.robust[score].extend((r["robust"].get(score) or {}).get("per_model", []))
            cell.robust_runs += 1
    return dict(cells)


def load_reference(path: str | Path) -> dict[tuple, tuple[float, float | None]]:
    """published.yaml: {methods: {name: {"<dataset>-<ipc>": "46.3±0.8" | 46.3}}} -> {(name, dataset, ipc): (mean, std)}."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DDError(f"reference {path} cannot be read ({e})") from None
    methods = (doc.get("methods") or {}) if isinstance(doc, dict) else None
    if not isinstance(methods, dict) or not all(isinstance(e, dict | None) for e in methods.values()):
        raise DDError(f"reference {path} must hold methods: {{<method>: {{<dataset>-<ipc>: mean±std}}}}")
    ref = {}
    for method, entries in methods.items():
        for key, value in (entries or {}).items():
            try:
                dataset, ipc = str(key).rsplit("-", 1)
                ipc = None if ipc == FULL else ipc  # "<dataset>-full": the full-data figure
                text = str(value).replace("+-", "±")
                mean, _, std = text.partition("±")
                ref[(method, dataset, None if ipc is None else int(ipc))] = (float(mean), float(std) if std else None)
            except ValueError:
                raise DDError(f"reference {path}: {method}: {key}: {value!r} is not <dataset>-<ipc>: mean±std") from None
    return ref


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.1f}" if std is None or math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def selected(cells: dict[tuple, Cell]) -> set[tuple]:
    """Keys of the cells that are the best (highest mean) of their sweep in their column."""
    best: dict[tuple, tuple] = {}
    for key, c in cells.items():
        if c.sweep is not None:
            group = (c.sweep, key[1], key[2])
            if group not in best or c.mean > cells[best[group]].mean:
                best[group] = key
    return set(best.values())


def _robust_text(c: Cell | None, score: str) -> str:
    if c is None or not c.robust[score]:
        return ""
    values = c.robust[score]
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} (n={c.robust_runs})"


def _bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def _storage_text(c: Cell | None) -> str:
    if c is None or not c.storage:
        return ""
    labels = float(np.mean([s["labels_bytes"] for s in c.storage]))
    images = float(np.mean([s["images_bytes"] for s in c.storage]))
    ratio = f" ({labels / images:.1f}x)" if images > 0 else ""
    return f"{_bytes(labels)} / {_bytes(images)}{ratio}"


def render(cells: dict[tuple, Cell], fmt: str = "md", reference: dict | None = None) -> str:
    reference = reference or {}
    picked = selected(cells)
    columns = sorted({(d, i) for _, d, i in cells if i is not None})
    if not columns:  # only full-data runs
        columns = sorted({(d, 1) for _, d, _ in cells})
    rows = sorted({r for r, _, _ in cells})
    ref_rows = sorted({r for r, _, _ in reference} - set(rows))
    # LRS and ARS columns beside an accuracy column when some run in it carries robust scores
    robust_cols = {(d, i) for (_, d, i), c in cells.items() if c.robust_runs}
    # a labels/images column beside an accuracy column when some run in it stores soft labels
    storage_cols = {(d, i) for (_, d, i), c in cells.items() if c.storage}
    header = ["method"]
    for d, i in columns:
        header += [f"{d} ipc{i}"] + ([f"{d} ipc{i} {s.upper()}" for s in ROBUST_SCORES] if (d, i) in robust_cols else [])
        header += [f"{d} ipc{i} labels/images"] if (d, i) in storage_cols else []
    body = []
    for row in rows:
        line = [row]
        for d, i in columns:
            c = cells.get((row, d, i), cells.get((row, d, None)))
            text = "" if c is None else f"{_fmt(c.mean, c.std)} (n={c.runs})"
            if c is not None and c.test_picked:
                text += f" {TEST_PICK_MARK}"
            if (row, d, i) in picked:
                text += f" {SELECTED_MARK}"
            method = row.split(" (")[0].split(" [")[0]
            pub = reference.get((method, d, i), reference.get((method, d, None)))
            if pub and c is not None:
                text += f" [paper {_fmt(*pub)}; {c.mean - pub[0]:+.1f}]"
            line.append(text)
            if (d, i) in robust_cols:
                line += [_robust_text(c, s) for s in ROBUST_SCORES]
            if (d, i) in storage_cols:
                line.append(_storage_text(c))
        body.append(line)
    for row in ref_rows:  # published rows with no run of ours, for context
        cells_of = [reference.get((row, d, i), reference.get((row, d, None))) for d, i in columns]
        if any(c is not None for c in cells_of):  # only rows with a figure in our columns
            line = [f"{row} (paper)"]
            for (d, i), c in zip(columns, cells_of):
                line += ["" if c is None else _fmt(*c)] + (["", ""] if (d, i) in robust_cols else [])
                line += [""] if (d, i) in storage_cols else []
            body.append(line)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows([header, *body])
        return buf.getvalue()
    if fmt == "latex":
        esc = lambda s: s.replace("±", r"$\pm$").replace("_", r"\_").replace(TEST_PICK_MARK, r"$^\dagger$")  # noqa: E731
        lines = [r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
                 " & ".join(map(esc, header)) + r" \\", r"\midrule"]
        lines += [" & ".join(map(esc, line)) + r" \\" for line in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt != "md":
        raise DDError(f"format '{fmt}' is unknown; choose one of: md, csv, latex")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |" for line in body]
    if robust_cols:
        out += ["", ROBUST_CAPTION]
    if storage_cols:
        kinds = sorted({str(s["labels"]) for c in cells.values() for s in c.storage if s.get("labels")})
        out += ["", STORAGE_CAPTION + (f"; labels: {'; '.join(kinds)}" if kinds else "")]
    if any(c.test_picked for c in cells.values()):
        out += ["", TEST_PICK_CAPTION]
    if picked:
        out += ["", SELECTED_CAPTION]
    return "\n".join(out) + "\n"


def plot(cells: dict[tuple, Cell], path: str | Path) -> None:
    """Accuracy vs IPC per method, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dd.fsutil import write_file

    datasets = sorted({d for _, d, _ in cells})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.5), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for row in sorted({r for r, dd, _ in cells if dd == d}):
            full = cells.get((row, d, None))
            if full is not None:  # ipc-independent: a horizontal band
                ax.axhline(full.mean, ls="--", color="gray", label=f"{row} ({full.mean:.1f})")
                continue
            pts = sorted((i, c) for (r, dd, i), c in cells.items() if r == row and dd == d)
            ipcs = [i for i, _ in pts]
            ax.errorbar(ipcs, [c.mean for _, c in pts], yerr=[c.std for _, c in pts], marker="o", capsize=3, label=row)
        ax.set_xscale("log")
        ax.set_xlabel("images per class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(d)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_file(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
