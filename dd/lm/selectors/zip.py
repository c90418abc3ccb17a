"""zip: Entropy Law's greedy selection of data with a low compression ratio (Yin et al. 2024). No model.

A document's compression ratio is its length over its zlib-compressed length; a low ratio means
little redundancy. The greedy order is built in rounds of three stages:
  global   the k1 documents of lowest current ratio are re-scored by their ratio *given what is
           already selected* (the marginal compressed size, after the selected text);
  coarse   the k2 lowest of them go on;
  fine     k3 are taken one at a time, each the lowest given the selection so far.
Ratios outside a round keep their last value (a lazy greedy). The marginal size comes from a copy
of a zlib compressor that has seen the selected text, so zlib's 32 KB window is the context, as it
is when the reference compresses the concatenated selection. The order is the score (rank 0 first)
and is cached, so every keep ratio reads a prefix of it.
"""

import zlib
from dataclasses import dataclass

import numpy as np
from omegaconf import MISSING
from tqdm.auto import tqdm

from dd.errors import require_positive
from dd.lm.base import LMRunContext, Selection, top
from dd.lm.cache import cached_scores
from dd.registry import register


@dataclass
class ZipConfig:
    name: str = MISSING
    k1: int = 1000  # global stage: candidates re-scored per round
    k2: int = 200  # coarse stage: candidates kept for the fine stage
    k3: int = 100  # fine stage: documents selected per round
    level: int = 9  # zlib level


def marginal_ratio(state, text: bytes) -> float:
    probe = state.copy()
    size = len(probe.compress(text)) + len(probe.flush(zlib.Z_SYNC_FLUSH))
    return len(text) / max(1, size)


def greedy_order(texts: list[bytes], k1: int, k2: int, k3: int, level: int, progress: bool = False) -> np.ndarray:
    """The rank of every document in the greedy low-compression-ratio order."""
    ratio = np.array([len(t) / max(1, len(zlib.compress(t, level))) for t in texts])
    left = np.ones(len(texts), dtype=bool)
    state = zlib.compressobj(level)
    rank = np.empty(len(texts), dtype=np.int64)
    done = 0
    with tqdm(total=len(texts), desc="zip", disable=not progress, mininterval=2, leave=False) as bar:
        while done < len(texts):
            pool = np.flatnonzero(left)
            pool = pool[np.argsort(ratio[pool], kind="stable")[:k1]]
            for i in pool:
                ratio[i] = marginal_ratio(state, texts[i])
            pool = list(pool[np.argsort(ratio[pool], kind="stable")[:k2]])
            for _ in range(min(k3, len(pool))):
                scores = [marginal_ratio(state, texts[i]) for i in pool]
                best = pool.pop(int(np.argmin(scores)))
                state.compress(texts[best])
                state.flush(zlib.Z_SYNC_FLUSH)
                left[best] = False
                rank[best] = done
                done += 1
                bar.update()
    return rank


@register("zip", kind="lm", schema=ZipConfig)
def select(ctx: LMRunContext, n_keep: int) -> Selection:
    m = ctx.cfg.method
    require_positive({"k1": m.k1, "k2": m.k2, "k3": m.k3})
    texts = [d.encode("utf-8") for d in ctx.corpus.docs["train"]]
    recipe = {"k1": m.k1, "k2": m.k2, "k3": m.k3, "level": m.level}
    rank, path = cached_scores(ctx, "zip", recipe,
                               lambda: greedy_order(texts, m.k1, m.k2, m.k3, m.level, ctx.progress))
    return Selection(top(rank, n_keep, highest=False), rank, "zip greedy rank", {"score_file": str(path)})
