"""results.json: one schema for every kind of run, one writer, one summary line.

    {"schema": 2, "kind": "image" | "text" | "lm", "method", "dataset", "model", "seed",
     "metric": {"name": "accuracy" | "perplexity", "mean", "std", "per_run": [...], "runs": "models",
                "higher_is_better"},
     ... the kind's own details (ipc, eval, f1, macro_f1, comparison, kept_fraction, per_domain, ...),
     "selection", "timings", "device", "precision", "config"}

`headline` also reads the files written before this schema (accuracy / perplexity at the top), so
tables over older runs keep working.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from dd.fsutil import write_json

SCHEMA = 2


@dataclass
class Metric:
    """A run's headline: one number per model (or per seed), summarised as mean ± std."""

    name: str  # accuracy | perplexity
    mean: float
    std: float
    per_run: list[float]
    higher_is_better: bool = True
    runs: str = "models"  # what one value is: a fresh model trained on the result

    def as_dict(self) -> dict:
        return asdict(self)


def record(out_dir: Path | None, *, kind: str, method: str, dataset: str, model: str, seed: int, metric: Metric,
           details: dict, timings: dict, device: str, precision: dict | None, selection, config: dict) -> dict:
    """The results of one run; written to out_dir/results.json by the job's main process (out_dir=None: not
    written, e.g. a baseline the caller files elsewhere)."""
    results = {"schema": SCHEMA, "kind": kind, "method": method, "dataset": dataset, "model": model, "seed": seed,
               "metric": metric.as_dict(), **details, "selection": selection, "timings": timings, "device": device,
               "precision": precision, "config": config}
    from dd import dist

    if out_dir is not None and dist.is_main():
        write_json(Path(out_dir) / "results.json", results)
    return results


def headline(results: dict) -> dict:
    """The headline {name, mean, std, per_run, higher_is_better} of a results dict of any schema."""
    if "metric" in results:
        return results["metric"]
    if "perplexity" in results:  # corpus runs before schema 2
        p = results["perplexity"]
        return {"name": "perplexity", "mean": p["mean"], "std": p["std"], "per_run": p["per_seed"],
                "higher_is_better": False, "runs": "models"}
    a = results["accuracy"]
    return {"name": "accuracy", "mean": a["mean"], "std": a["std"], "per_run": a["per_model"],
            "higher_is_better": True, "runs": "models"}


def kind_of(results: dict) -> str:
    """The kind of a results dict of any schema (older image and text files carried none)."""
    if "kind" in results:
        return results["kind"]
    return "text" if "backbone" in results else "image"


def format_metric(m: dict) -> str:
    if m["name"] == "accuracy":
        return f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}%"
    return f"{m['mean']:.3f} ± {m['std']:.3f}"


def summary(results: dict, out_dir: Path | str | None = None) -> str:
    """The line every dd-* run prints (with its baselines' and robust scores' lines beneath, where it has them)."""
    m = headline(results)
    where = f" -> {out_dir}" if out_dir is not None else ""
    if "kept_fraction" in results:
        scope = f" keep={results['kept_fraction']:.3f} ({results['kept_documents']} documents)"
    elif results.get("ipc") is not None:
        scope = f" ipc={results['ipc']}"
    else:
        scope = ""
    on = f" on {results['model']}" if results.get("distilled_with") not in (None, results.get("model")) else ""
    n = len(m["per_run"])
    line = (f"{results['method']} {results['dataset']}{scope}{on}: test {m['name']} {format_metric(m)} over {n} "
            f"{results['model']} {m['runs'] if n != 1 else m['runs'].rstrip('s')}")
    worst = results.get("worst_domain")
    if worst:
        line += f"; worst domain {worst['domain']} {worst['perplexity']:.2f}"
    lines = [line + where]
    for name, other in (results.get("comparison") or {}).items():  # baselines run beside it (method.compare)
        o = headline(other)
        lines.append(f"  {name} {results['dataset']}: test {o['name']} {format_metric(o)} over {len(o['per_run'])} "
                     f"runs" + (f" -> {Path(out_dir) / 'compare' / name}" if out_dir is not None else ""))
    if "robust" in results:
        from dd.image.robust import format_robust

        lines.append(format_robust(results["robust"]))
    return "\n".join(lines)
