"""What every dd-* entry point shares: the package's config folder, choice checks, clean errors."""

import atexit
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from dd.config import CONF_DIR
from dd.errors import DDError

GROUPS = ("dataset", "model", "method", "eval", "logger", "experiment")


def choices(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_choices(argv: list[str]) -> None:
    """Refuse an unknown config-group choice (dataset=foo) or an unusable device (device=cuda on a machine
    without one) before Hydra starts, so nothing is written, with what is allowed."""
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key == "hydra/launcher" and value == "slurm":
            check_slurm()
            continue
        if key == "device" and "(" not in value:
            from dd.device import resolve_device

            for v in value.split(","):
                resolve_device(v)
            continue
        if key not in GROUPS or "(" in value:
            continue  # sweeps like range()/glob() are left to Hydra
        known = choices(key)
        for v in value.split(","):
            if v and v not in known:
                raise DDError(f"{key} '{v}' is unknown; choose one of: {', '.join(known)}")


def check_slurm() -> None:
    """hydra/launcher=slurm needs the submitit launcher plugin and SLURM's commands on this machine."""
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        raise DDError("hydra/launcher=slurm needs the submitit launcher: pip install 'ddlab[launchers]'")
    if shutil.which("sbatch") is None:
        raise DDError("hydra/launcher=slurm needs SLURM, but there is no sbatch on this machine's PATH; run on a "
                      "cluster's login node, or use hydra/launcher=local")


def fail(prog: str, err: Exception) -> None:
    print(f"{prog}: error: {err}", file=sys.stderr)
    sys.exit(2)


def guarded(prog: str, fn: Callable[[], object]) -> object:
    """Run fn; a DDError becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except DDError as e:
        fail(prog, e)


# what a rank other than 0 must not hand Hydra: its own run or sweep folder (rank 0's is the job's)
_RANK0_ONLY = ("hydra.run.dir=", "hydra.sweep.dir=", "hydra.output_subdir=", "hydra/job_logging=")


def rank_argv(argv: list[str]) -> list[str]:
    """The command line for this process of a job. In one process, and on rank 0, it is `argv`; ranks
    1.. get a private scratch run folder, no .hydra/ copy and no log file, so that only rank 0's folder
    holds the run (`job_output_dir` hands every rank that folder, where checkpoints are read on resume)."""
    from dd import dist

    r, w, _ = dist.launched()
    if w <= 1 or r == 0:
        return argv
    scratch = tempfile.mkdtemp(prefix=f"dd-rank{r}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    kept = [a for a in argv[1:] if not a.lstrip("+~").startswith(_RANK0_ONLY)]
    return [argv[0], *kept, f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra.output_subdir=null",
            "hydra/job_logging=disabled"]


def job_output_dir(cfg) -> tuple[Path, str | None]:
    """The run folder and sweep name of this job (see hydra_output_dir). In a job of several processes this
    joins its process group first (dd.dist.init, on the run's device) and every rank gets rank 0's folder."""
    from dd import dist
    from dd.device import resolve_device

    out_dir, group = hydra_output_dir()
    if dist.init(resolve_device(cfg.device)):
        out_dir, group = dist.broadcast((str(out_dir), group))
        out_dir = Path(out_dir)
        if not dist.is_main():  # tasks of one SLURM job share a folder: rank 0 writes the run's log file
            root = logging.getLogger()
            for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
                root.removeHandler(handler)
    return out_dir, group


def hydra_output_dir() -> tuple[Path, str | None]:
    """The job's run folder, and the sweep's name when in a multirun (for grouping runs)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return Path(hc.runtime.output_dir), group
