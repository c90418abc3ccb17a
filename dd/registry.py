"""The method registry: every method module registers itself here, with its kind and config schema.

Adding a method is one module under dd/image/methods/, dd/text/methods/ or dd/lm/selectors/ plus
one YAML under dd/conf/method/. A name is unique within its kind; `random` is both an image coreset and
a language-model pruning selector, and the dataset's kind picks which. The module decorates its entry point:

    @register("dm", kind="image", schema=DMConfig)
    def distill(ctx: RunContext) -> SynSet: ...

and the YAML extends the schema (`defaults: [dm_schema, _self_]`). The method packages are
imported on first lookup, so the registry needs no list of them.
"""

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dd.errors import DDError
from dd.tracking import Tracker

KINDS = ("image", "text", "lm")
_PACKAGES = ("dd.image.methods", "dd.text.methods", "dd.lm.selectors")


@dataclass
class RunContext:
    """What every method receives (text methods get dd.text.base.TextRunContext, which adds the classifier)."""

    cfg: object  # the resolved DictConfig
    data: object  # ImageDataset or TextDataset
    device: torch.device
    out_dir: Path
    tracker: Tracker
    progress: bool = True


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # image | text | lm: which pipeline runs it, and which datasets it takes
    run: Callable  # (RunContext) -> SynSet (image) or TextSynSet (text); lm: (LMRunContext, n_keep) -> Selection
    schema: type | None  # the config dataclass; stored for Hydra as method/<schema_name>
    schema_name: str


_METHODS: dict[tuple[str, str], Method] = {}  # (kind, name) -> method
_discovered = False


def register(name: str, *, kind: str, schema: type | None = None, schema_name: str | None = None):
    """Decorator: register `fn` as method `name`. Methods sharing one schema pass the same schema_name."""
    if kind not in KINDS:
        raise ValueError(f"kind '{kind}' is unknown; choose one of: {', '.join(KINDS)}")

    def add(fn: Callable) -> Callable:
        old = _METHODS.get((kind, name))
        if old is not None and old.run is not fn:
            raise ValueError(f"{kind} method '{name}' is registered twice ({old.run.__module__}, {fn.__module__})")
        _METHODS[(kind, name)] = Method(name, kind, fn, schema, schema_name or f"{name}_schema")
        return fn

    return add


def discover() -> None:
    """Import every module of the method packages once, so each registers itself."""
    global _discovered
    if _discovered:
        return
    for package in _PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{package}.{info.name}")
    _discovered = True


def methods(kind: str | None = None) -> dict[str, Method]:
    """{name: Method} of the methods of one kind, in registration order (no kind: the first of each name)."""
    discover()
    found: dict[str, Method] = {}
    for (k, n), m in _METHODS.items():
        if (kind is None or k == kind) and n not in found:
            found[n] = m
    return found


def schemas() -> dict[str, type]:
    """{schema_name: config dataclass} of every method of every kind."""
    discover()
    return {m.schema_name: m.schema for m in _METHODS.values() if m.schema is not None}


def get(name: str, kind: str | None = None) -> Method:
    """Method `name` of `kind` (no kind, or none of that kind: of any kind, so the caller can say it mismatches)."""
    discover()
    if kind is not None and (kind, name) in _METHODS:
        return _METHODS[(kind, name)]
    found = methods().get(name)
    if found is None:
        raise DDError(f"method '{name}' is unknown; choose one of: {', '.join(methods())}")
    return found
