"""The corpus methods' contract: their registry, what they receive (LMRunContext) and return (Selection).

A corpus method (a data selector) is one module under dd/lm/methods/ that registers itself:

    @METHODS.register("nll", schema=NLLConfig)
    def select(ctx: LMRunContext) -> Selection: ...

It scores the training documents (through dd.lm.cache, so a second run reuses the scores and the
probe models) and keeps ctx.n_keep of them.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dd.lm.corpus import LMCorpus
from dd.lm.tokenizer import Tokenizer
from dd.registry import Registry, RunContext


@dataclass
class LMRunContext(RunContext):
    """RunContext (data: the LMCorpus) plus the corpus's tokens and the selection's size."""

    tokenizer: Tokenizer | None = None
    ids: dict[str, list[list[int]]] | None = None  # split -> token ids of every document
    cache_dir: Path | None = None  # scores and probe models, shared by every run on the corpus (dd.lm.cache)
    n_keep: int = 0  # training documents to keep

    @property
    def corpus(self) -> LMCorpus:
        return self.data


@dataclass
class Selection:
    kept: list[int]  # indices into the training split, in the selector's order
    scores: np.ndarray | None  # one score per training document (None: the selector has none)
    score_name: str = ""  # what the score is ("nll", "compression ratio", ...)
    info: dict = field(default_factory=dict)  # what the selector wants in results.json


def top(scores: np.ndarray, n: int, highest: bool = True) -> list[int]:
    """The n documents of highest (or lowest) score; ties broken by index, so the pick is deterministic."""
    order = np.lexsort((np.arange(len(scores)), -scores if highest else scores))
    return order[:n].tolist()


METHODS = Registry("lm", "dd.lm.methods", returns=Selection, contract="""Language-model corpus methods (data selectors).

Receives: an LMRunContext: the run's config (cfg.method is the method's schema), the LMCorpus (ctx.data,
also ctx.corpus), its token ids per split, the tokenizer, the device, the run folder, the tracker, the
shared cache folder and n_keep, the number of training documents to keep.
Returns: a Selection: the kept training-document indices in the method's order, one score per document
(or None) and what the score is. method=full keeps every document, method=random a uniform part.
May write: scores and probe models through dd.lm.cache (keyed by corpus and recipe); the corpus kind trains
the language models on what is kept, exports it and writes results.json.""")
