"""Method registries: one per kind of work, each declared in its kind's home with its contract.

    image  dd.image.base.METHODS   (ImageRunContext) -> SynSet
    text   dd.text.base.METHODS    (TextRunContext)  -> TextSynSet
    lm     dd.lm.base.METHODS      (LMRunContext)    -> Selection

A method is one module in its kind's `methods` package that decorates its entry point, plus one YAML
under dd/conf/method/ (its name and preset values; the schema comes from the registry):

    @METHODS.register("dm", schema=DMConfig)
    def distill(ctx: ImageRunContext) -> SynSet: ...

A name means the same on every kind: `random` is random real examples, `full` the full-data
reference. A name is unique within its kind; the dataset declares the kind, so `method=random`
reaches the image, text or corpus method without guessing. The method packages are imported on first
lookup, so no list of them is kept.
"""

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING

from dd.errors import DDError
from dd.tracking import Tracker

KINDS = ("image", "text", "lm")
# names that changed when the kinds took one naming: refused with the new one
RENAMED = {"random_text": "random", "herding_text": "herding", "full_finetune": "full"}


@dataclass
class RunContext:
    """What every method receives; each kind's context adds its own parts (dd.*.base)."""

    cfg: object  # the composed DictConfig of the run (its kind's root: dd.*.kind)
    data: object  # the kind's loaded data: ImageDataset, TextDataset or LMCorpus
    device: torch.device
    out_dir: Path  # the run folder: a method may write its checkpoints here, nothing else
    tracker: Tracker
    progress: bool = True


@dataclass
class MethodConfig:
    """The schema of a method without settings of its own."""

    name: str = MISSING


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    run: Callable
    schema: type


class Registry:
    """The methods of one kind, by name; `contract` (the instance's __doc__) says what a method receives,
    returns and may write, and `run` checks the returned type."""

    def __init__(self, kind: str, package: str, returns: type, contract: str):
        if kind not in KINDS:
            raise ValueError(f"kind '{kind}' is unknown; choose one of: {', '.join(KINDS)}")
        self.kind, self.package, self.returns, self.__doc__ = kind, package, returns, contract
        self._methods: dict[str, Method] = {}
        self._discovered = False

    def register(self, name: str, schema: type | None = None):
        """Decorator: register `fn` as this kind's method `name` with its config schema."""

        def add(fn: Callable) -> Callable:
            old = self._methods.get(name)
            if old is not None and old.run is not fn:
                raise ValueError(f"{self.kind} method '{name}' is registered twice ({old.run.__module__}, "
                                 f"{fn.__module__})")
            self._methods[name] = Method(name, self.kind, fn, schema or MethodConfig)
            return fn

        return add

    def _discover(self) -> None:
        if not self._discovered:
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{self.package}.{info.name}")
            self._discovered = True

    def methods(self) -> dict[str, Method]:
        """{name: Method} in registration order."""
        self._discover()
        return dict(self._methods)

    def names(self) -> list[str]:
        return list(self.methods())

    def get(self, name: str) -> Method:
        """Method `name`; a renamed, other-kind or unknown name is refused in one line that says what to use."""
        found = self.methods().get(name)
        if found is not None:
            return found
        if name in RENAMED:
            raise DDError(f"method '{name}' is now method={RENAMED[name]} (one name on every kind)")
        ok = ", ".join(self.names())
        others = [k for k in KINDS if k != self.kind and name in registry(k).names()]
        if others:
            raise DDError(f"method '{name}' is {article(others[0])} {others[0]} method; "
                          f"{self.kind} runs (the dataset's kind) take: {ok}")
        raise DDError(f"method '{name}' is unknown; {self.kind} runs take: {ok}")

    def run(self, name: str, ctx) -> object:
        """Run method `name` on `ctx` and check what it returns."""
        result = self.get(name).run(ctx)
        if not isinstance(result, self.returns):
            raise DDError(f"{self.kind} method '{name}' returned {type(result).__name__}; {self.kind} methods "
                          f"return {self.returns.__name__}")
        return result

    def with_fields(self, *fields: str) -> list[str]:
        """Names of the methods whose schema has all these fields (a query, e.g. baselines that share steps)."""
        return [n for n, m in self.methods().items() if all(f in m.schema.__dataclass_fields__ for f in fields)]


def article(kind: str) -> str:
    """'an image', 'a text', 'an lm': for messages that name a kind."""
    return "an" if kind in ("image", "lm") else "a"


def registry(kind: str) -> Registry:
    """The method registry of `kind` (declared in dd/<kind>/base.py)."""
    if kind not in KINDS:
        raise DDError(f"kind '{kind}' is unknown; choose one of: {', '.join(KINDS)}")
    return importlib.import_module(f"dd.{kind}.base").METHODS


def schemas() -> dict[str, type]:
    """{<kind>_<name>: config dataclass} of every method of every kind (Hydra's method_schema group)."""
    return {f"{k}_{n}": m.schema for k in KINDS for n, m in registry(k).methods().items()}
