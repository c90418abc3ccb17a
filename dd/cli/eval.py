"""dd-eval: evaluate an exported set on any architecture (cross-architecture generalisation).

    dd-eval path=outputs/demo/mtt/distilled model=resnet18 eval.num_models=5
    dd-eval -m path=outputs/demo/mtt/distilled model=convnet,alexnet,vgg11,resnet18,resnet18_ap
    dd-eval path=outputs/demo/mtt/distilled eval.protocol=robust    # DD-Ranking's LRS and ARS
"""

import sys

import hydra
from omegaconf import DictConfig

from dd.cli.common import CONF_DIR, check_choices, guarded, job_output_dir, rank_argv
from dd.config import register_configs

PROG = "dd-eval"
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval_set")
def _app(cfg: DictConfig) -> float:
    from dd.image.pipeline import evaluate_exported

    out_dir, group = guarded(PROG, lambda: job_output_dir(cfg))
    results = guarded(PROG, lambda: evaluate_exported(cfg, out_dir, group=group))
    acc = results["accuracy"]
    from dd import dist

    if not dist.is_main():  # rank 0 of a job reports
        return acc["mean"]
    print(f"{results['method']} {results['dataset']} ipc={results['ipc']} on {results['model']}: test accuracy "
          f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}% over {len(acc['per_model'])} models -> {out_dir}")
    if "robust" in results:
        from dd.image.robust import format_robust

        print(format_robust(results["robust"]))
    return acc["mean"]


def main() -> None:
    guarded(PROG, lambda: check_choices(sys.argv[1:]))
    sys.argv = rank_argv(sys.argv)  # several processes (torchrun, srun): one run folder, rank 0's
    _app()


if __name__ == "__main__":
    main()
