"""What a pruning selector receives and returns.

A selector is one module under dd/lm/selectors/ that registers itself with kind "lm":

    @register("nll", kind="lm", schema=NLLConfig)
    def select(ctx: LMRunContext, n_keep: int) -> Selection: ...

It scores the training documents (through dd.lm.cache, so a second run reuses the scores and the
probe models) and keeps n_keep of them.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dd.lm.corpus import LMCorpus
from dd.lm.tokenizer import Tokenizer


@dataclass
class LMRunContext:
    cfg: object  # the resolved DictConfig
    corpus: LMCorpus
    tokenizer: Tokenizer
    ids: dict[str, list[list[int]]]  # split -> token ids of every document
    device: torch.device
    out_dir: Path
    cache_dir: Path
    progress: bool = True


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
