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


def user_config_dirs(argv: list[str]) -> list[Path]:
    """Config folders a user adds the Hydra way: --config-dir/-cd DIR, or hydra.searchpath=[file://DIR,...]."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            entries = arg.split("=", 1)[1].strip("[]").split(",")
            dirs += [e.strip().removeprefix("file://") for e in entries if e.strip().startswith("file://")]
    return [Path(d).expanduser() for d in dirs]


def choices(group: str, extra_dirs: list[Path] = ()) -> list[str]:
    """The options of a config group: the package's, and those of the user's config folders."""
    found = set()
    for root in (CONF_DIR, *extra_dirs):
        folder = root / group
        if folder.is_dir():
            found |= {p.stem for p in folder.glob("*.yaml")}
    return sorted(found)


def overrides_of(argv: list[str]) -> list[tuple[str, str, str]]:
    """(prefix, key, value) of each key=value override (the prefix is Hydra's +, ++ or ~)."""
    out = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp"):
            skip_next = True
            continue
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        stripped = key.lstrip("+~")
        out.append((key[: len(key) - len(stripped)], stripped, value))
    return out


def check_choices(argv: list[str], kinds: bool = True) -> None:
    """Refuse, before Hydra starts (so nothing is written), with what is allowed: an unknown config-group
    choice (dataset=foo), an unusable device (device=cuda on a machine without one), a renamed method, and
    (kinds=True: dd-distill's config) a method or a key that does not belong to the run's kind."""
    from dd.registry import RENAMED

    extra = user_config_dirs(argv)
    for _, key, value in overrides_of(argv):
        if key == "hydra/launcher" and value == "slurm":
            check_slurm()
            continue
        if key == "device" and "(" not in value:
            from dd.device import resolve_device

            for v in value.split(","):
                resolve_device(v)
            continue
        if key == "kind":
            raise DDError("kind is not chosen on the command line: the dataset declares it (choose a dataset of the "
                          "kind you want)")
        if key not in GROUPS or "(" in value:
            continue  # sweeps like range()/glob() are left to Hydra
        known = choices(key, extra)
        for v in value.split(","):
            if key == "method" and v in RENAMED:
                raise DDError(f"method '{v}' is now method={RENAMED[v]} (one name on every kind)")
            if v and v not in known:
                raise DDError(f"{key} '{v}' is unknown; choose one of: {', '.join(known)}")
    if kinds and not extra:  # a user's config folder may hold what the package's tree cannot compose
        check_kind(argv)
        if not {"-m", "--multirun"} & set(argv):  # a single run: Hydra's own checks, as one line
            check_compose(argv)


def check_compose(argv: list[str]) -> None:
    """Compose the run as dd-distill will, so a misspelt key or an ill-typed value is refused in one line (the
    first of Hydra's message, which names the key) before anything is written."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dd.config import compose

    wanted = [f"{p}{k}={v}" for p, k, v in overrides_of(argv) if not k.startswith("hydra")]
    try:
        compose(wanted)
    except (HydraException, OmegaConfBaseException) as e:
        first = [str(x).strip().splitlines()[0] for x in (e, e.__cause__) if x is not None and str(x).strip()]
        raise DDError(": ".join(first) if first else type(e).__name__) from None


def models_of(kind: str) -> list[str]:
    """The model options that declare `kind` (an option without one is an image model)."""
    import yaml

    found = []
    for name in choices("model"):
        doc = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text()) or {}
        schema = " ".join(d for d in doc.get("defaults", []) if isinstance(d, str))
        declared = "lm" if "lm_model_schema" in schema else "text" if "text_model_schema" in schema else "image"
        if declared == kind:
            found.append(name)
    return found


# the config groups each kind's root composes (dd/conf/kind/<kind>.yaml)
KIND_GROUPS = {"image": ("dataset", "model", "method", "eval", "logger", "experiment"),
               "text": ("dataset", "model", "method", "logger", "experiment"),
               "lm": ("dataset", "model", "method", "logger", "experiment")}


def check_kind(argv: list[str]) -> None:
    """Every override belongs to the run's kind: the kind its dataset (or preset) declares. For each dataset
    and preset of a sweep, compose the run without the other overrides, and refuse the first method, group or
    key that the kind's root does not hold, in one line that names the kind and its keys."""
    import itertools
    from dataclasses import fields

    from dd.config import compose, kind_roots
    from dd.registry import article, registry

    ovr = overrides_of(argv)
    picks = {k: (p, [v for v in value.split(",") if v]) for p, k, value in ovr
             if k in ("dataset", "experiment") and "(" not in value}
    dataset_values = picks.get("dataset", ("", [None]))
    experiment_values = picks.get("experiment", ("", [None]))
    roots = kind_roots()
    for ds, ex in itertools.product(dataset_values[1], experiment_values[1]):
        probe = ([f"{dataset_values[0]}dataset={ds}"] if ds else []) + ([f"{experiment_values[0]}experiment={ex}"] if ex else [])
        try:
            cfg = compose(probe)
        except Exception:  # Hydra reports what fails to compose, with its own message
            return
        kind = cfg.dataset.kind
        where = f"dataset={cfg.dataset.name} is {article(kind)} {kind} dataset"
        keys = [f.name for f in fields(roots[kind])]
        for prefix, key, value in ovr:
            top = key.split(".")[0].split("@")[0]
            if key in ("dataset", "experiment") or key.startswith("hydra") or "/" in key or "(" in value:
                continue  # sweeps like choice()/range() are left to Hydra
            if key == "method":
                for v in value.split(","):
                    if v:
                        registry(kind).get(v)
                continue
            if key == "model":
                for v in value.split(","):
                    model_kind = compose([*probe, f"model={v}"]).model.get("kind") if v else kind
                    if model_kind != kind:
                        raise DDError(f"model '{v}' is {article(model_kind)} {model_kind} model; {where}, which takes "
                                      f"{article(kind)} {kind} model: {', '.join(models_of(kind))}")
                continue
            if key in KIND_GROUPS["image"] and key not in KIND_GROUPS[kind]:
                raise DDError(f"{key}={value} is not an option of {kind} runs ({where}); {kind} runs take the "
                              f"groups {', '.join(KIND_GROUPS[kind])}")
            if prefix.startswith("+"):
                continue  # an addition: Hydra checks it against the schema
            if top not in keys and top not in KIND_GROUPS[kind]:
                raise DDError(f"{key}={value}: '{top}' is not a key of {kind} runs ({where}); {kind} runs take: "
                              f"{', '.join(keys)}")
            section = cfg.get(top)
            sub = key.split(".")[1] if "." in key else None
            if sub is not None and top in ("eval", "inner", "buffer", "teacher", "relabel", "prune") and \
                    hasattr(section, "keys") and sub not in section:
                raise DDError(f"{key}={value}: '{sub}' is not a key of {article(kind)} {kind} run's {top} ({where}); "
                              f"it takes: {', '.join(section.keys())}")


def check_slurm() -> None:
    """hydra/launcher=slurm needs the submitit launcher plugin and SLURM's commands on this machine."""
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        raise DDError("hydra/launcher=slurm needs the submitit launcher: pip install 'ddlab[launchers]'")
    if shutil.which("sbatch") is None:
        raise DDError("hydra/launcher=slurm needs SLURM, but there is no sbatch on this machine's PATH; run on a "
                      "cluster's login node, or use hydra/launcher=local")


def version_line(prog: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{prog} (ddlab {version('ddlab')})"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return f"{prog} (ddlab, not installed)"


def print_version_if_asked(prog: str, argv: list[str]) -> None:
    """`--version` on a Hydra command: the version line, exit 0 (argparse commands use action="version")."""
    if "--version" in argv:
        print(version_line(prog))
        sys.exit(0)


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
