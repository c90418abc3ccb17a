"""The corpus kind (language-model data pruning): its root config and its phases of dd.pipeline.run.

load and tokenise the corpus -> the method (a data selector) gets an LMRunContext and keeps n_keep training
documents -> causal LMs trained on what is kept -> held-out perplexity overall and per domain recorded ->
the kept documents exported with their scores and provenance.

Every point of a pruning curve trains for the same number of tokens (prune.tokens) unless
prune.epochs asks for passes over the kept documents instead; the selection's scores and the probe
models are cached (dd.lm.cache), so a sweep over keep ratios and seeds scores each corpus once.
"""

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from dd import dist, seeds
from dd.config import RunConfig
from dd.errors import DDError, require_positive
from dd.fsutil import write_file, write_json
from dd.hostmem import peak_rss_mb
from dd.lm.base import LMRunContext, Selection
from dd.lm.config import PruneConfig
from dd.lm.corpus import LMCorpus, load_corpus
from dd.lm.model import build_model, doc_nll, perplexities, train, windows
from dd.lm.tokenizer import build_tokenizer
from dd.results import Metric

log = logging.getLogger(__name__)


@dataclass
class LMRunConfig(RunConfig):
    """A corpus run's root: the shared keys plus what is kept and how the language models train on it."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    run_name: str = "${method.name}_${dataset.name}_keep${prune.keep}"


def check_prune_config(cfg: DictConfig) -> None:
    if cfg.model.get("kind") != "lm":
        raise DDError(f"model={cfg.model.name} is not a language model; a language-model corpus "
                      f"(dataset={cfg.dataset.name}) takes model=gpt2_tiny (or model.name_or_path=<HF causal LM folder>)")
    p = cfg.prune
    if not 0 < p.keep <= 1:
        raise DDError(f"prune.keep={p.keep} is not allowed; it must be in (0, 1] (the fraction of documents kept)")
    if p.budget is not None and p.budget <= 0:
        raise DDError(f"prune.budget={p.budget} is not allowed; it must be a positive number of documents")
    if p.epochs is not None:
        require_positive({"epochs": p.epochs}, "prune")
    require_positive({k: p[k] for k in ("runs", "tokens", "batch_size", "lr", "eval_batch_size", "probe_tokens")}, "prune")
    if not 0 <= p.warmup < 1 or not 0 <= p.min_lr_ratio <= 1:
        raise DDError(f"prune.warmup={p.warmup} must be in [0, 1) and prune.min_lr_ratio={p.min_lr_ratio} in [0, 1]")
    for path in (p.init_from, cfg.model.get("name_or_path")):
        if path and not Path(path).expanduser().exists():
            raise DDError(f"{path} does not exist; give a local Hugging Face causal LM folder")


def documents_to_keep(cfg: DictConfig, n_train: int) -> int:
    p = cfg.prune
    if p.budget is not None:
        if p.budget > n_train:
            raise DDError(f"prune.budget={p.budget} is more than the {n_train} training documents of "
                          f"dataset={cfg.dataset.name}; give at most {n_train}")
        return int(p.budget)
    return max(1, round(p.keep * n_train))


def train_steps(cfg: DictConfig, kept_tokens: int) -> int:
    p, per_step = cfg.prune, cfg.prune.batch_size * cfg.model.context
    tokens = p.epochs * kept_tokens if p.epochs is not None else p.tokens
    return max(1, math.ceil(tokens / per_step))


def main_model(cfg: DictConfig, vocab_size: int, k: int):
    init = cfg.prune.init_from
    if init:
        model = build_model(OmegaConf.merge(cfg.model, {"name_or_path": init}), vocab_size, 0)
        if model.get_input_embeddings().num_embeddings < vocab_size:
            raise DDError(f"prune.init_from={init} embeds {model.get_input_embeddings().num_embeddings} token ids, fewer "
                          f"than this run's tokenizer makes ({vocab_size}); give model.name_or_path={init} too, so its "
                          "own tokenizer reads the corpus")
        return model
    return build_model(cfg.model, vocab_size, cfg.seed, purpose="lm_init") if k == 0 else \
        build_model(cfg.model, vocab_size, seeds.derive("lm_run", cfg.seed, k), purpose="lm_init")


def export_kept(out_dir: Path, ctx: LMRunContext, sel: Selection, provenance: dict) -> dict:
    """The kept documents with their scores and the selection's provenance: jsonl, parquet, and a HF dataset."""
    import pandas as pd

    frame = pd.DataFrame({
        "text": [ctx.corpus.docs["train"][i] for i in sel.kept],
        "domain": [ctx.corpus.domains["train"][i] for i in sel.kept],
        "doc_index": sel.kept,
        "rank": range(len(sel.kept)),
        "score": [float(sel.scores[i]) for i in sel.kept] if sel.scores is not None else [math.nan] * len(sel.kept),
    })
    folder = out_dir / "kept"
    write_file(folder / "kept.jsonl", lambda p: frame.to_json(p, orient="records", lines=True, force_ascii=False))
    write_file(folder / "kept.parquet", lambda p: frame.to_parquet(p, index=False))
    write_json(folder / "provenance.json", provenance)
    files = {"jsonl": str(folder / "kept.jsonl"), "parquet": str(folder / "kept.parquet")}
    try:
        import datasets

        from dd.fsutil import atomic_dir

        datasets.disable_progress_bars()
        with atomic_dir(folder / "hf") as tmp:
            datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(tmp))
        files["hf"] = str(folder / "hf")
    except ImportError:
        pass
    return files


def corpus_details(cfg, corpus, sel: Selection, runs: list[dict], curves: list[list[float]],
               kept_tokens: int, train_tokens: int, trained: int) -> dict:
    test = [r["test"] for r in runs]
    domains = sorted(test[0]["per_domain"])
    per_domain = {d: float(np.mean([r["per_domain"][d] for r in test])) for d in domains}
    worst = max(per_domain, key=per_domain.get)
    kept_domains = [corpus.domains["train"][i] for i in sel.kept]
    out = {
        "keep": cfg.prune.keep if cfg.prune.budget is None else None,
        "budget": cfg.prune.budget,
        "kept_documents": len(sel.kept),
        "kept_fraction": len(sel.kept) / len(corpus.docs["train"]),
        "kept_token_fraction": kept_tokens / train_tokens,
        "tokens": {"train_split": train_tokens, "kept": kept_tokens, "trained": trained,
                   "passes_over_kept": trained / kept_tokens, "test": test[0]["tokens"]},
        "per_domain": per_domain,
        "domain_mean": float(np.mean(list(per_domain.values()))),
        "worst_domain": {"domain": worst, "perplexity": per_domain[worst]},
        "kept_per_domain": {d: kept_domains.count(d) for d in sorted(set(corpus.domains["train"]))},
        "kept_by": {"score": sel.score_name, **{k: v for k, v in sel.info.items() if k != "score_file"}},
        "loss_curve": [float(np.mean(c[max(0, i - 10): i + 1])) for c in curves[-1:] for i in range(0, len(c), max(1, len(c) // 50))],
        "corpus": {**corpus.summary(), "fingerprint": corpus.fingerprint},
    }
    if all("val" in r for r in runs):
        val = [r["val"]["perplexity"] for r in runs]
        out["val_perplexity"] = {"mean": float(np.mean(val)), "std": float(np.std(val)), "per_seed": val}
    return out


@dataclass
class LoadedCorpus:
    corpus: LMCorpus
    tokenizer: object
    ids: dict[str, list[list[int]]]  # split -> token ids of every document
    cache_dir: Path


class CorpusKind:
    name = "lm"

    def check(self, cfg: DictConfig) -> None:
        if dist.world() > 1:
            raise DDError(f"language-model pruning runs are one process; this job has {dist.world()}")
        check_prune_config(cfg)

    def load(self, cfg: DictConfig, device) -> LoadedCorpus:
        cache_dir = Path(cfg.prune.cache_dir).expanduser() / "lm"
        corpus = load_corpus(cfg.dataset)
        tok = build_tokenizer(cfg.model, corpus.docs["train"], corpus.fingerprint, cache_dir)
        return LoadedCorpus(corpus, tok, {s: tok.encode(docs) for s, docs in corpus.docs.items()}, cache_dir)

    def resolved(self, cfg: DictConfig) -> dict:
        return OmegaConf.to_container(cfg, resolve=True)

    def model_name(self, cfg: DictConfig) -> str:
        return cfg.model.name

    def context(self, cfg, loaded: LoadedCorpus, device, out_dir: Path, tracker) -> LMRunContext:
        n_keep = documents_to_keep(cfg, len(loaded.corpus.docs["train"]))
        return LMRunContext(cfg=cfg, data=loaded.corpus, device=device, out_dir=out_dir, tracker=tracker,
                            progress=cfg.progress, tokenizer=loaded.tokenizer, ids=loaded.ids,
                            cache_dir=loaded.cache_dir, n_keep=n_keep)

    def evaluate(self, ctx: LMRunContext, sel: Selection, clock):
        """Train prune.runs causal LMs on the kept documents (the same token budget at every keep) and score them."""
        from dd.pipeline import Outcome

        cfg, corpus, ids, p = ctx.cfg, ctx.corpus, ctx.ids, ctx.cfg.prune
        kept_ids = [ids["train"][i] for i in sel.kept]
        kept_tokens = sum(len(x) + 1 for x in kept_ids)
        train_tokens = sum(len(x) + 1 for x in ids["train"])
        steps = train_steps(cfg, kept_tokens)
        trained = steps * p.batch_size * cfg.model.context
        log.info("%s keeps %d of %d documents (%d of %d tokens); training %d steps (%d tokens, %.2f passes)",
                 cfg.method.name, len(sel.kept), len(ids["train"]), kept_tokens, train_tokens, steps, trained,
                 trained / kept_tokens)
        runs, curves = [], []
        for k in range(p.runs):
            with clock("train_s"):
                model = main_model(cfg, ctx.tokenizer.vocab_size, k)
                gen = seeds.generator("lm_data", cfg.seed, k)
                curve = train(model, windows(kept_ids, ctx.tokenizer.eot, p.batch_size, cfg.model.context, gen), steps,
                              p, ctx.device, desc=f"train {k + 1}/{p.runs}", progress=cfg.progress)
            with clock("evaluate_s"):
                found = {}
                for split in ("test", "val"):
                    if ids[split]:
                        nll, count = doc_nll(model, ids[split], ctx.tokenizer.eot, cfg.model.context,
                                             p.eval_batch_size, ctx.device)
                        found[split] = perplexities(nll, count, corpus.domains[split])
            runs.append(found)
            curves.append(curve)
            ctx.tracker.log({"test_perplexity": found["test"]["perplexity"], "run": k})
            log.info("run %d: test perplexity %.3f", k, found["test"]["perplexity"])
        ppl = [r["test"]["perplexity"] for r in runs]
        metric = Metric("perplexity", float(np.mean(ppl)), float(np.std(ppl)), ppl, higher_is_better=False)
        details = corpus_details(cfg, corpus, sel, runs, curves, kept_tokens, train_tokens, trained)
        if p.runs == 1:
            details["note"] = "one model per run: the spread over seeds comes from a sweep over seed"
        return Outcome(metric, details, {"peak_rss_mb": peak_rss_mb()}, selection=None, result=sel,
                       summary={"test_perplexity": metric.mean})

    def export(self, ctx: LMRunContext, sel: Selection, outcome, resolved: dict) -> dict:
        """The kept documents (jsonl, parquet, a HF dataset) with their scores, and the score file."""
        cfg, p, out = ctx.cfg, ctx.cfg.prune, {}
        score_file = sel.info.get("score_file")
        if score_file and Path(score_file).exists() and Path(score_file).parent != ctx.out_dir:
            write_file(ctx.out_dir / "scores.json", lambda dst: shutil.copyfile(score_file, dst))
            out["scores_file"] = str(ctx.out_dir / "scores.json")
        if p.export:
            provenance = {"method": cfg.method.name, "method_config": OmegaConf.to_container(cfg.method, resolve=True),
                          "keep": p.keep, "budget": p.budget, "seed": cfg.seed, "corpus": ctx.corpus.name,
                          "corpus_fingerprint": ctx.corpus.fingerprint, "score": sel.score_name, **sel.info}
            out["export"] = export_kept(ctx.out_dir, ctx, sel, provenance)
        return out


KIND = CorpusKind()
