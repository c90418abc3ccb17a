"""zip: Entropy Law's greedy selection of data with a low compression ratio (Yin et al. 2024). No model.

A set's compression ratio is its length over its zlib-compressed length; a low ratio means little
redundancy. The greedy order grows a selection D in rounds of three stages, each scoring a candidate x
by the ratio of the union, |D + x| / C(D + x):
  global   the k1 candidates of lowest current score are re-scored against the selection as it is now;
  coarse   the k2 lowest of them go on;
  fine     k3 are taken one at a time, each the lowest given the selection so far.
Scores outside a round keep their last value (a lazy greedy; the first scores are each document's own
ratio, the union ratio with an empty selection). C(D + x) is C(D) plus what a copy of a zlib
compressor that has seen D adds for x, so zlib's 32 KB window is the context, as it is when the
reference compresses the concatenated selection. The order is the score (rank 0 first) and is
cached, so every keep ratio reads a prefix of it.
"""

import zlib
from dataclasses import dataclass

import numpy as np
from omegaconf import MISSING
from tqdm.auto import tqdm

from dd.errors import DDError, require_positive
from dd.lm.base import METHODS, LMRunContext, Selection, top
from dd.lm.cache import cached_scores


@dataclass
class ZipConfig:
    name: str = MISSING
    k1: int = 1000  # global stage: candidates re-scored per round
    k2: int = 200  # coarse stage: candidates kept for the fine stage
    k3: int = 100  # fine stage: documents selected per round
    level: int = 9  # zlib level


def marker_size(state) -> int:
    """Bytes a sync flush emits when nothing is pending: the marker that ends every measurement below."""
    return len(state.copy().flush(zlib.Z_SYNC_FLUSH))


def added_size(state, text: bytes, marker: int | None = None) -> int:
    """Compressed bytes `text` adds after what `state` (a zlib compressor) has seen, without the ~5 bytes of
    the sync marker (left in, they would favour short documents)."""
    probe = state.copy()
    size = len(probe.compress(text)) + len(probe.flush(zlib.Z_SYNC_FLUSH))
    return max(1, size - (marker_size(state) if marker is None else marker))


def greedy_order(texts: list[bytes], k1: int, k2: int, k3: int, level: int, progress: bool = False) -> np.ndarray:
    """The rank of every document in the greedy low-compression-ratio order."""
    ratio = np.array([len(t) / max(1, len(zlib.compress(t, level))) for t in texts])
    left = np.ones(len(texts), dtype=bool)
    state = zlib.compressobj(level)
    rank = np.empty(len(texts), dtype=np.int64)
    done = size_in = size_out = 0  # the selection's raw and compressed bytes
    marker = marker_size(state)

    def union_ratio(i: int) -> float:
        return (size_in + len(texts[i])) / max(1, size_out + added_size(state, texts[i], marker))

    with tqdm(total=len(texts), desc="zip", disable=not progress, mininterval=2, leave=False) as bar:
        while done < len(texts):
            pool = np.flatnonzero(left)
            pool = pool[np.argsort(ratio[pool], kind="stable")[:k1]]
            for i in pool:
                ratio[i] = union_ratio(i)
            pool = list(pool[np.argsort(ratio[pool], kind="stable")[:k2]])
            for _ in range(min(k3, len(pool))):
                scores = [union_ratio(i) for i in pool]
                best = pool.pop(int(np.argmin(scores)))
                size_in += len(texts[best])
                size_out += added_size(state, texts[best], marker)
                state.compress(texts[best])
                state.flush(zlib.Z_SYNC_FLUSH)
                marker = marker_size(state)
                left[best] = False
                rank[best] = done
                done += 1
                bar.update()
    return rank


@METHODS.register("zip", schema=ZipConfig)
def select(ctx: LMRunContext) -> Selection:
    n_keep = ctx.n_keep
    m = ctx.cfg.method
    require_positive({"k1": m.k1, "k2": m.k2, "k3": m.k3})
    if not 0 <= m.level <= 9:
        raise DDError(f"method.level={m.level} is not a zlib level; it must be in 0..9")
    texts = [d.encode("utf-8") for d in ctx.corpus.docs["train"]]
    recipe = {"k1": m.k1, "k2": m.k2, "k3": m.k3, "level": m.level, "version": 2}
    rank, path = cached_scores(ctx, "zip", recipe,
                               lambda: greedy_order(texts, m.k1, m.k2, m.k3, m.level, ctx.progress))
    return Selection(top(rank, n_keep, highest=False), rank, "zip greedy rank", {"score_file": str(path)})
