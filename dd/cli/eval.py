"""dd-eval: evaluate an exported set on any architecture (cross-architecture generalisation).

    dd-eval path=outputs/demo/mtt/distilled model=resnet18 eval.num_models=5
    dd-eval -m path=outputs/demo/mtt/distilled model=convnet,alexnet,vgg11,resnet18,resnet18_ap
    dd-eval path=outputs/demo/mtt/distilled eval.protocol=robust    # DD-Ranking's LRS and ARS
"""

import sys

import hydra
from omegaconf import DictConfig

from dd.cli.common import check_choices, guarded, job_output_dir, print_version_if_asked, rank_argv
from dd.config import CONF_DIR, register_configs

PROG = "dd-eval"
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval_set")
def _app(cfg: DictConfig) -> float:
    from dd import dist
    from dd.image.exported import evaluate_exported
    from dd.results import headline, summary

    out_dir, group = guarded(PROG, lambda: job_output_dir(cfg))
    results = guarded(PROG, lambda: evaluate_exported(cfg, out_dir, group=group))
    if dist.is_main():  # rank 0 of a job reports
        print(summary(results, out_dir))
    return headline(results)["mean"]


def main() -> None:
    print_version_if_asked(PROG, sys.argv[1:])
    guarded(PROG, lambda: check_choices(sys.argv[1:], kinds=False))
    sys.argv = rank_argv(sys.argv)  # several processes (torchrun, srun): one run folder, rank 0's
    _app()


if __name__ == "__main__":
    main()
