"""One run of any kind: `run(cfg, out_dir)` walks the same phases for images, text and corpora.

    kind  = the dataset's declared kind (dd.image.kind, dd.text.kind, dd.lm.kind)
    check -> load data -> build the context -> run the method (its return type checked)
          -> evaluate -> export -> record (dd.results: one results.json schema, one summary line)

Each kind supplies the phases in its home; device, precision, tracker, timings and results are
handled here once. A Python user calls `run` with a composed config (dd.config.compose) and a folder.
"""

import importlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from dd import precision, seeds
from dd.device import describe, resolve_device
from dd.errors import DDError
from dd.registry import KINDS, article, registry
from dd.results import Metric, record
from dd.tracking import make_tracker


@dataclass
class Outcome:
    """What a kind's evaluation phase hands the record: the headline and the kind's own details."""

    metric: Metric
    details: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    selection: object = None  # the split a method picked its result on (test | val), or None
    summary: dict = field(default_factory=dict)  # what the tracker's run summary gets
    result: object = None  # the kind's own evaluation (its export records it)


class Clock:
    """Seconds per phase, for results.json's timings."""

    def __init__(self):
        self.start, self.timings = time.perf_counter(), {}

    @contextmanager
    def __call__(self, key: str):
        t0 = time.perf_counter()
        yield
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def total(self) -> dict:
        return {**self.timings, "total_s": time.perf_counter() - self.start}


def kind_of(cfg: DictConfig):
    """The phases of the run's kind, as its dataset config declares it."""
    name = cfg.dataset.get("kind")
    if name not in KINDS:
        raise DDError(f"dataset '{cfg.dataset.get('name')}' declares kind '{name}'; a dataset config's kind is one "
                      f"of: {', '.join(KINDS)}")
    return importlib.import_module(f"dd.{name}.kind").KIND


def run(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    out_dir = Path(out_dir)
    kind = kind_of(cfg)
    methods = registry(kind.name)
    methods.get(cfg.method.name)  # an unknown or other-kind method is refused before anything is loaded
    model_kind = cfg.model.get("kind")
    if model_kind != kind.name:
        raise DDError(f"model '{cfg.model.name}' is {article(model_kind)} {model_kind} model; dataset={cfg.dataset.name} "
                      f"is {article(kind.name)} {kind.name} dataset, which takes {article(kind.name)} {kind.name} model")
    kind.check(cfg)
    device = resolve_device(cfg.device)
    precision.start_run(cfg)
    clock = Clock()
    with clock("data_s"):
        loaded = kind.load(cfg, device)  # the kind's data (and what it needs beside it: a backbone, tokens)
    resolved = kind.resolved(cfg)
    tracker = make_tracker(cfg.logger, resolved, out_dir, name=out_dir.name, group=group)
    try:
        ctx = kind.context(cfg, loaded, device, out_dir, tracker)
        seeds.seed_global("global", cfg.seed)
        with clock("method_s"):
            result = methods.run(cfg.method.name, ctx)
        outcome = kind.evaluate(ctx, result, clock)
        details = dict(outcome.details)
        if cfg.export:
            details.update(kind.export(ctx, result, outcome, resolved))
        results = record(out_dir, kind=kind.name, method=cfg.method.name, dataset=ctx.data.name,
                         model=kind.model_name(cfg), seed=cfg.seed, metric=outcome.metric, details=details,
                         timings={**clock.total(), **outcome.timings}, device=describe(device),
                         precision=precision.record(cfg, device), selection=outcome.selection, config=resolved)
        tracker.summary(outcome.summary)
        return results
    finally:
        tracker.finish()
