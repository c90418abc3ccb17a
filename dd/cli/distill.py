"""dd-distill: learn (or select) a small training set, evaluate it, export it.

    dd-distill method=random dataset=digits ipc=10
    dd-distill experiment=digits_mtt ipc=1
    dd-distill -m method=random,herding,kcenter ipc=1,10,50 seed=0,1,2
    dd-distill experiment=lm_prune_fortunes method=nll prune.keep=0.5 seed=0
"""

import sys

import hydra
from omegaconf import DictConfig

from dd.cli.common import check_choices, guarded, job_output_dir, print_version_if_asked, rank_argv
from dd.config import CONF_DIR, register_configs

PROG = "dd-distill"
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> float:
    from dd import dist
    from dd.pipeline import run
    from dd.results import headline, summary

    out_dir, group = guarded(PROG, lambda: job_output_dir(cfg))
    results = guarded(PROG, lambda: run(cfg, out_dir, group=group))
    if dist.is_main():  # rank 0 of a job reports
        print(summary(results, out_dir))
    return headline(results)["mean"]


def main() -> None:
    print_version_if_asked(PROG, sys.argv[1:])
    guarded(PROG, lambda: check_choices(sys.argv[1:]))
    sys.argv = rank_argv(sys.argv)  # several processes (torchrun, srun): one run folder, rank 0's
    _app()


if __name__ == "__main__":
    main()
