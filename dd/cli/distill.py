"""dd-distill: learn (or select) a small training set, evaluate it, export it.

    dd-distill method=random dataset=digits ipc=10
    dd-distill experiment=digits_mtt_ipc1
    dd-distill -m method=random,herding,kcenter ipc=1,10,50 seed=0,1,2
    dd-distill experiment=lm_prune_fortunes method=nll prune.keep=0.5 seed=0
"""

import sys

import hydra
from omegaconf import DictConfig

from dd.cli.common import CONF_DIR, check_choices, guarded, job_output_dir, rank_argv
from dd.config import register_configs

PROG = "dd-distill"
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> float:
    from dd.pipeline import run

    out_dir, group = guarded(PROG, lambda: job_output_dir(cfg))
    results = guarded(PROG, lambda: run(cfg, out_dir, group=group))
    if results.get("kind") == "lm":
        ppl = results["perplexity"]
        print(f"{results['method']} {results['dataset']} keep={results['kept_fraction']:.3f} "
              f"({results['kept_documents']} documents): test perplexity {ppl['mean']:.3f} ± {ppl['std']:.3f} "
              f"over {len(ppl['per_seed'])} {results['model']} models; worst domain "
              f"{results['worst_domain']['domain']} {results['worst_domain']['perplexity']:.2f} -> {out_dir}")
        return ppl["mean"]
    acc = results["accuracy"]
    from dd import dist

    if not dist.is_main():  # rank 0 of a job reports
        return acc["mean"]
    print(
        f"{results['method']} {results['dataset']} ipc={results['ipc']}: test accuracy "
        f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}% over {len(acc['per_model'])} {results['model']} models "
        f"-> {out_dir}"
    )
    for name, other in results.get("comparison", {}).items():  # baselines run beside it (text: method.compare)
        o = other["accuracy"]
        print(f"  {name} {results['dataset']}: test accuracy {100 * o['mean']:.2f} ± {100 * o['std']:.2f}% "
              f"over {len(o['per_model'])} runs -> {out_dir / 'compare' / name}")
    return acc["mean"]


def main() -> None:
    guarded(PROG, lambda: check_choices(sys.argv[1:]))
    sys.argv = rank_argv(sys.argv)  # several processes (torchrun, srun): one run folder, rank 0's
    _app()


if __name__ == "__main__":
    main()
