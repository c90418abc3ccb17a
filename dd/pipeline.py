"""One dd-distill run: the method and the dataset must be of one kind, which picks the pipeline.

Image runs go to dd.image.pipeline, text runs to dd.text.pipeline; both write the same
results.json schema. A Python user can call `run` with a composed config and an output folder.
"""

from pathlib import Path

from omegaconf import DictConfig

from dd.errors import DDError
from dd.registry import get, methods


def dataset_kind(cfg: DictConfig) -> str:
    return "text" if cfg.dataset.get("kind") == "text" else "image"


def run(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    method, kind = get(cfg.method.name), dataset_kind(cfg)
    if method.kind != kind:
        ok = ", ".join(methods(kind))
        if method.kind == "text":
            raise DDError(f"method '{method.name}' needs a text dataset (dataset=synthetic_topics, fortunes, ag_news, "
                          f"sst2, qnli, mrpc or text_files); dataset '{cfg.dataset.name}' holds images, which take: {ok}")
        raise DDError(f"method '{method.name}' works on image datasets; for text datasets choose one of: {ok}")
    if kind == "text":
        from dd.text.pipeline import run_text

        return run_text(cfg, out_dir, group=group)
    from dd.image.pipeline import run_image

    return run_image(cfg, out_dir, group=group)
