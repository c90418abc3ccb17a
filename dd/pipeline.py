"""One dd-distill run: the method and the dataset must be of one kind, which picks the pipeline.

Image runs go to dd.image.pipeline, text runs to dd.text.pipeline (both write the same
results.json schema), language-model corpora to dd.lm.pipeline (pruning: perplexity, not accuracy). A Python user can call `run` with a composed config and an output folder.
"""

from pathlib import Path

from omegaconf import DictConfig

from dd.errors import DDError
from dd.registry import get, methods


def dataset_kind(cfg: DictConfig) -> str:
    kind = cfg.dataset.get("kind")
    return kind if kind in ("text", "lm") else "image"


def run(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    kind = dataset_kind(cfg)
    method = get(cfg.method.name, kind)
    if method.kind != kind:
        ok = ", ".join(methods(kind))
        if method.kind == "text":
            raise DDError(f"method '{method.name}' needs a text dataset (dataset=synthetic_topics, fortunes, ag_news, "
                          f"sst2, qnli, mrpc or text_files); dataset '{cfg.dataset.name}' is an {kind} dataset, which takes: {ok}")
        if method.kind == "lm":
            raise DDError(f"method '{method.name}' prunes language-model corpora (dataset=lm_fortunes, lm_debian or "
                          f"lm_files); dataset '{cfg.dataset.name}' takes: {ok}")
        raise DDError(f"method '{method.name}' works on image datasets; for {kind} datasets choose one of: {ok}")
    if kind == "lm":
        from dd.lm.pipeline import run_lm

        return run_lm(cfg, out_dir, group=group)
    if kind == "text":
        from dd.text.pipeline import run_text

        return run_text(cfg, out_dir, group=group)
    from dd.image.pipeline import run_image

    return run_image(cfg, out_dir, group=group)
