"""The causal language model of the pruning runs: build it, train it on a token stream, score documents.

Training reads a stream of the kept documents, each followed by the separator, shuffled anew every
pass (seeded) and cut into windows of `context + 1` tokens; a fixed number of steps makes every
point of a pruning curve see the same number of training tokens. A `mixture` stream instead draws
each window from one domain, the domain drawn by weight (DoReMi's reference and proxy models).
"""

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dd import seeds
from dd.device import to_device
from dd.errors import DDError


def build_model(model_cfg, vocab_size: int, seed: int, purpose: str = "lm_init"):
    """GPT-2's architecture at model_cfg's size, initialised from stream (purpose, seed), or a HF causal LM."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its notices about unset generation ids are not the user's concern
    if model_cfg.name_or_path:
        try:
            return AutoModelForCausalLM.from_pretrained(model_cfg.name_or_path)
        except (OSError, ValueError) as e:
            raise DDError(f"model.name_or_path={model_cfg.name_or_path}: no causal LM there ({str(e).splitlines()[0]})") from None
    for key in ("n_layer", "n_embd", "n_head", "context"):
        if not model_cfg[key] > 0:
            raise DDError(f"model.{key}={model_cfg[key]} is not allowed; it must be positive")
    if model_cfg.n_embd % model_cfg.n_head:
        raise DDError(f"model.n_embd={model_cfg.n_embd} must be a multiple of model.n_head={model_cfg.n_head}")
    config = GPT2Config(vocab_size=vocab_size, n_positions=model_cfg.context, n_embd=model_cfg.n_embd,
                        n_layer=model_cfg.n_layer, n_head=model_cfg.n_head, resid_pdrop=model_cfg.dropout,
                        embd_pdrop=model_cfg.dropout, attn_pdrop=model_cfg.dropout, bos_token_id=None,
                        eos_token_id=None)
    seeds.seed_global(purpose, seed)
    return GPT2LMHeadModel(config)


def windows(docs: list[list[int]], eot: int, rows: int, context: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless (rows, context + 1) batches of the documents' stream, reshuffled every pass."""
    if not docs:
        raise DDError("no documents to train on")
    need = rows * context + 1
    buffer: list[int] = []
    while True:
        while len(buffer) < need:
            for i in torch.randperm(len(docs), generator=gen).tolist():
                buffer.extend(docs[i])
                buffer.append(eot)
        flat = torch.tensor(buffer[:need])
        del buffer[: need - 1]  # the last target is the next batch's first input
        yield flat[:-1].view(rows, context).contiguous(), flat[1:].view(rows, context).contiguous()


def mixture_windows(by_domain: list[list[list[int]]], weights: torch.Tensor, eot: int, rows: int, context: int,
                    seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless batches whose every row comes from one domain's own stream, the domain drawn by `weights`
    (the draws of domains and each domain's shuffles are streams of their own, derived from `seed`)."""
    streams = [windows(docs, eot, 1, context, seeds.generator("lm_mixture_shuffle", seed, d))
               for d, docs in enumerate(by_domain)]
    pick_gen = seeds.generator("lm_mixture_pick", seed)
    while True:
        pick = torch.multinomial(weights, rows, replacement=True, generator=pick_gen)
        pairs = [next(streams[d]) for d in pick.tolist()]
        yield torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]), pick


def token_losses(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)


def lr_at(step: int, steps: int, cfg) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio."""
    warm = max(1, int(cfg.warmup * steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def optimizer(model, cfg) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95))


def train(model, batches: Iterator, steps: int, cfg, device: torch.device, loss_fn=None, desc: str = "train",
          progress: bool = True) -> list[float]:
    """`steps` AdamW steps on `batches`; loss_fn(model, batch) -> scalar replaces the mean token loss.
    Returns the loss curve (one value per step, fetched from the device every 50 steps, not every step)."""
    if cfg.grad_clip is not None and cfg.grad_clip < 0:
        raise DDError(f"prune.grad_clip={cfg.grad_clip} is not allowed; it must be >= 0 (0 = no clipping)")
    model.to(device).train()
    opt = optimizer(model, cfg)
    curve, pending = [], []
    for step in tqdm(range(steps), desc=desc, disable=not progress, mininterval=2, leave=False):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg)
        batch = [to_device(t, device) for t in next(batches)]  # pinned, no wait for the GPU
        loss = loss_fn(model, batch) if loss_fn else token_losses(model, batch[0], batch[1]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        pending.append(loss.detach())
        if len(pending) == 50 or step == steps - 1:
            curve.extend(torch.stack(pending).tolist())
            pending = []
    if not all(map(math.isfinite, curve)):
        bad = next(i for i, v in enumerate(curve) if not math.isfinite(v))
        raise DDError(f"the language model's training loss became {curve[bad]} at step {bad}; lower prune.lr={cfg.lr}")
    return curve


@torch.no_grad()
def doc_nll(model, docs: list[list[int]], eot: int, context: int, batch_size: int, device: torch.device,
            progress: bool = False, desc: str = "score") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (nats) and token count of every document: the separator, then the document and the
    separator as targets, in windows of `context` (a long document's later windows start fresh)."""
    model.to(device).eval()
    pieces = []  # (doc, inputs, targets)
    for d, ids in enumerate(docs):
        seq = [eot, *ids, eot]
        for s in range(0, len(seq) - 1, context):
            chunk = seq[s: s + context + 1]
            pieces.append((d, chunk[:-1], chunk[1:]))
    pieces.sort(key=lambda p: len(p[1]))  # batches of like lengths pad little
    nll = torch.zeros(len(docs), dtype=torch.float64, device=device)
    count = torch.zeros(len(docs), dtype=torch.float64, device=device)
    for b in tqdm(range(0, len(pieces), batch_size), desc=desc, disable=not progress, mininterval=2, leave=False):
        part = pieces[b: b + batch_size]
        width = max(len(p[1]) for p in part)
        x = torch.full((len(part), width), eot, dtype=torch.long)
        y = torch.full((len(part), width), -100, dtype=torch.long)
        for r, (_, i, t) in enumerate(part):
            x[r, : len(i)] = torch.tensor(i)
            y[r, : len(t)] = torch.tensor(t)
        x, y = x.to(device), y.to(device)
        logits = model(input_ids=x).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none", ignore_index=-100).view_as(y)
        owner = torch.tensor([p[0] for p in part], device=device)
        nll.index_add_(0, owner, loss.sum(1).double())
        count.index_add_(0, owner, (y != -100).sum(1).double())
    return nll.cpu(), count.cpu()


def perplexities(nll: torch.Tensor, count: torch.Tensor, domains: list[str]) -> dict:
    """Token-weighted perplexity overall and per domain, the macro mean over domains and the worst domain."""
    per_domain = {}
    for name in sorted(set(domains)):
        mask = torch.tensor([d == name for d in domains])
        per_domain[name] = math.exp(float(nll[mask].sum() / count[mask].sum()))
    worst = max(per_domain, key=per_domain.get)
    return {"perplexity": math.exp(float(nll.sum() / count.sum())), "per_domain": per_domain,
            "domain_mean": sum(per_domain.values()) / len(per_domain), "worst_domain": {worst: per_domain[worst]},
            "tokens": int(count.sum())}
