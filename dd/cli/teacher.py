"""dd-teacher: train (or check) the teacher that sre2l / rded distil from, cached under $DD_CACHE.

    dd-teacher dataset=digits teacher.model.width=32 teacher.epochs=20
    dd-teacher experiment=fashion_mnist_rded               # the teacher that preset uses
    dd-teacher dataset=cifar10 teacher.path=resnet18_cifar10.pth teacher.model.name=resnet18   # check a given one
"""

import sys

import hydra
from omegaconf import DictConfig

from dd.cli.common import check_choices, guarded, print_version_if_asked
from dd.config import CONF_DIR, register_configs
from dd.errors import DDError

PROG = "dd-teacher"
register_configs()


def build(cfg: DictConfig) -> None:
    if cfg.dataset.kind != "image":
        raise DDError(f"{PROG} works on image datasets; dataset={cfg.dataset.name} is a {cfg.dataset.kind} dataset")
    from dd.device import resolve_device
    from dd.image.kind import load_data
    from dd.image.teachers import get_teacher

    data = load_data(cfg)
    teacher = get_teacher(cfg, data, resolve_device(cfg.device), cfg.progress)
    where = teacher.manifest.get("folder") or teacher.manifest.get("file")
    print(f"teacher {where}: {teacher.manifest['model']['name']} on {data.name}, "
          f"test accuracy {100 * teacher.manifest['test_accuracy']:.2f}%")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    guarded(PROG, lambda: build(cfg))


def main() -> None:
    print_version_if_asked(PROG, sys.argv[1:])
    guarded(PROG, lambda: check_choices(sys.argv[1:]))
    _app()


if __name__ == "__main__":
    main()
