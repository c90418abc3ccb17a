"""doremi: domain weights by Group DRO with a proxy model against a reference model (Xie et al. 2023),
then a kept set whose domain shares follow them.

  reference  the probe: trained on the training split in its natural proportions (cached, shared with nll);
  proxy      trained on windows drawn from the domains uniformly; at every step each domain's excess
             loss (proxy minus reference per token, clipped at 0, averaged over the domain's tokens in
             the batch) raises its weight, alpha <- softmax(log alpha + step_size * excess), smoothed
             toward uniform by `smoothing`; the proxy's loss is the alpha-weighted sum of domain losses;
  weights    the mean of alpha over the proxy's steps.
The kept set takes `keep` of the training tokens, shared across domains by the weights (a domain
smaller than its share is kept whole and the rest is spread over the others), documents drawn at
random within a domain. `method.weights=uniform` keeps the same amount with equal shares: the
baseline DoReMi is compared against. The paper samples its main model's batches by the weights;
as a pruning method here, the weights decide what is kept.
"""

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import MISSING

from dd import seeds
from dd.errors import DDError, require_positive
from dd.lm.base import METHODS, LMRunContext, Selection
from dd.lm.cache import cached_scores, model_recipe
from dd.lm.model import build_model, mixture_windows, token_losses, train
from dd.lm.probe import probe_model, steps_for

WEIGHTS = ("doremi", "uniform")


@dataclass
class DoReMiConfig:
    name: str = MISSING
    weights: str = "doremi"  # doremi | uniform
    step_size: float = 1.0  # the paper's eta
    smoothing: float = 1e-3  # the paper's c


def domain_weights(ctx: LMRunContext, names: list[str], step_size: float, smoothing: float) -> np.ndarray:
    p, mcfg = ctx.cfg.prune, ctx.cfg.model
    train_domains = ctx.corpus.domains["train"]
    everyone = list(range(len(train_domains)))
    reference = probe_model(ctx, "probe", everyone).eval()
    for q in reference.parameters():
        q.requires_grad_(False)
    by_domain = [[ctx.ids["train"][i] for i in everyone if train_domains[i] == d] for d in names]
    k = len(names)
    state = {"alpha": torch.full((k,), 1.0 / k, dtype=torch.float64), "sum": torch.zeros(k, dtype=torch.float64), "n": 0}

    def dro_loss(model, batch):
        x, y, dom = batch
        proxy = token_losses(model, x, y)  # (rows, context)
        with torch.no_grad():
            excess_tok = (proxy.detach() - token_losses(reference, x, y)).clamp_min(0).mean(1)
        # the weights live on the host (k numbers): one small copy per proxy step, a host wait on CUDA that
        # DoReMi's weight update needs; the losses stay on the device
        onehot = torch.nn.functional.one_hot(dom.cpu(), k).double()  # rows x domains
        rows = onehot.sum(0)
        present = rows > 0
        excess = (onehot.T @ excess_tok.double().cpu()) / rows.clamp_min(1)
        log_alpha = state["alpha"].log()
        log_alpha[present] += step_size * excess[present]
        alpha = torch.softmax(log_alpha, 0)
        alpha = (1 - smoothing) * alpha + smoothing / k
        state["alpha"], state["sum"], state["n"] = alpha, state["sum"] + alpha, state["n"] + 1
        # each domain's mean row loss, weighted by alpha (domains absent from the batch weigh 0)
        weight = torch.where(present, alpha / rows.clamp_min(1), 0.0) @ onehot.T  # per row
        return (weight.to(proxy.device, proxy.dtype) * proxy.mean(1)).sum()

    def proxy_weights() -> np.ndarray:
        model = build_model(mcfg, ctx.tokenizer.vocab_size, p.probe_seed, purpose="lm_proxy")
        stream = mixture_windows(by_domain, torch.full((k,), 1.0 / k), ctx.tokenizer.eot, p.batch_size, mcfg.context,
                                 seed=seeds.derive("lm_proxy_data", p.probe_seed))
        train(model, stream, steps_for(p.probe_tokens, ctx), p, ctx.device, loss_fn=dro_loss, desc="doremi proxy",
              progress=ctx.progress)
        return (state["sum"] / state["n"]).numpy()

    recipe = {"probe": model_recipe(ctx), "step_size": step_size, "smoothing": smoothing, "domains": names}
    weights, _ = cached_scores(ctx, "doremi_weights", recipe, proxy_weights, length=k)  # one per domain, `names` order
    return weights


def token_shares(weights: np.ndarray, sizes: np.ndarray, total: float) -> np.ndarray:
    """Tokens per domain: `total` split by `weights`, no domain above its size, the excess spread (water-filling)."""
    share = np.zeros(len(weights))
    open_ = sizes > 0
    left = total
    while left > 1e-9 and open_.any():
        w = np.where(open_, weights, 0.0)
        if w.sum() <= 0:
            w = open_.astype(float)
        add = left * w / w.sum()
        room = sizes - share
        take = np.minimum(add, room)
        share += take
        left -= take.sum()
        open_ &= (sizes - share) > 1e-9
    return share


@METHODS.register("doremi", schema=DoReMiConfig)
def select(ctx: LMRunContext) -> Selection:
    n_keep = ctx.n_keep
    m = ctx.cfg.method
    if m.weights not in WEIGHTS:
        raise DDError(f"method.weights={m.weights} is unknown; choose one of: {', '.join(WEIGHTS)}")
    require_positive({"step_size": m.step_size})
    if not 0 <= m.smoothing <= 1:
        raise DDError(f"method.smoothing={m.smoothing} is not allowed; it must be in [0, 1]")
    if ctx.cfg.prune.budget is not None:
        raise DDError(f"method=doremi keeps a fraction of the training tokens (prune.keep), not a number of documents; "
                      f"drop prune.budget={ctx.cfg.prune.budget}")
    domains = ctx.corpus.domains["train"]
    names = sorted(set(domains))
    if len(names) < 2:
        raise DDError(f"method=doremi needs a corpus of at least 2 domains; dataset={ctx.corpus.name} has one "
                      f"({names[0]}); set dataset.domain_column to a column naming each document's domain")
    if m.weights == "doremi":
        weights = domain_weights(ctx, names, m.step_size, m.smoothing)
    else:
        weights = np.full(len(names), 1.0 / len(names))
    lengths = np.array([len(ids) + 1 for ids in ctx.ids["train"]], dtype=np.float64)
    index = {d: i for i, d in enumerate(names)}
    dom = np.array([index[d] for d in domains])
    sizes = np.bincount(dom, weights=lengths, minlength=len(names))
    target = token_shares(weights, sizes, lengths.sum() * n_keep / len(lengths))
    order = torch.randperm(len(domains), generator=seeds.generator("lm_doremi_order", ctx.cfg.seed)).tolist()
    kept, got = [], np.zeros(len(names))
    for i in order:  # documents at random, each domain until its share is met (the last one taken if closer)
        d = dom[i]
        if got[d] < target[d] and (target[d] - got[d]) * 2 >= lengths[i] or got[d] == 0 < target[d]:
            kept.append(i)
            got[d] += lengths[i]
    per_doc = weights[dom]
    return Selection(kept, per_doc, "domain weight", {
        "domain_weights": dict(zip(names, map(float, weights), strict=True)), "weights": m.weights,
        "kept_tokens_per_domain": dict(zip(names, map(int, got), strict=True))})
