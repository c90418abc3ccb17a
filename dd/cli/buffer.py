"""dd-buffer: train expert trajectories for trajectory matching (resumable, shardable).

    dd-buffer dataset=cifar10 model=convnet buffer.num_experts=100 buffer.epochs=50
    dd-buffer -m hydra/launcher=slurm buffer.start=0,25,50,75 buffer.count=25 buffer.dir=/shared/buf
"""

import sys

import hydra
from omegaconf import DictConfig

from dd.cli.common import check_choices, guarded, print_version_if_asked, rank_argv
from dd.config import CONF_DIR, register_configs
from dd.errors import DDError

PROG = "dd-buffer"
register_configs()


def build(cfg: DictConfig) -> None:
    if cfg.dataset.kind != "image":
        raise DDError(f"{PROG} works on image datasets; dataset={cfg.dataset.name} is a {cfg.dataset.kind} dataset")
    from dd import dist
    from dd.device import resolve_device
    from dd.image.experts import build_buffer, expert_ids
    from dd.image.kind import load_data

    device = resolve_device(cfg.device)
    dist.init(device)  # under torchrun / srun the ranks share the experts out (dd.image.experts.build_buffer)
    data = load_data(cfg)
    buffer = build_buffer(cfg, data, device, ids=expert_ids(cfg.buffer), progress=cfg.progress)
    if not dist.is_main():
        return
    records = buffer.records()
    accs = [r["test_accuracy"] for r in records]
    print(f"buffer {buffer.folder}: {len(records)} experts, {cfg.buffer.epochs} epochs each, "
          f"test accuracy {100 * sum(accs) / len(accs):.2f}% mean (min {100 * min(accs):.2f}, max {100 * max(accs):.2f})")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    guarded(PROG, lambda: build(cfg))


def main() -> None:
    print_version_if_asked(PROG, sys.argv[1:])
    guarded(PROG, lambda: check_choices(sys.argv[1:]))
    sys.argv = rank_argv(sys.argv)  # several processes (torchrun, srun): one run folder, rank 0's
    _app()


if __name__ == "__main__":
    main()
