"""What every dd-* entry point shares: the conf/ folder, choice checks, clean errors."""

import sys
from collections.abc import Callable
from pathlib import Path

from dd.errors import DDError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
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


def fail(prog: str, err: Exception) -> None:
    print(f"{prog}: error: {err}", file=sys.stderr)
    sys.exit(2)


def guarded(prog: str, fn: Callable[[], object]) -> object:
    """Run fn; a DDError becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except DDError as e:
        fail(prog, e)


def hydra_output_dir() -> tuple[Path, str | None]:
    """The job's run folder, and the sweep's name when in a multirun (for grouping runs)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return Path(hc.runtime.output_dir), group
