"""Experiment tracking: wandb (offline unless WANDB_MODE says otherwise), or nothing.

Everything a method wants to record goes through a Tracker, so methods never
import wandb and `logger=none` needs no wandb account.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from dd import dist

log = logging.getLogger(__name__)


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "ddlab"
    entity: str | None = None
    group: str | None = None  # default: the sweep folder's name in multirun
    tags: list[str] = field(default_factory=list)


class Tracker:
    """Logs nothing. The base for real trackers."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        pass

    def log_artifact(self, folder: str | Path, name: str, kind: str, aliases: list[str] | None = None) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, logger_cfg, config: dict, out_dir: Path, name: str, group: str | None):
        import wandb

        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            group=logger_cfg.group or group,
            tags=list(logger_cfg.tags),
            name=name,
            config=config,
            dir=str(out_dir),
            mode=mode,
            settings=_settings(wandb),
            reinit="finish_previous",
        )

    def log(self, metrics, step=None):
        self.run.log(metrics, step=step)

    def log_image(self, key, path, step=None):
        self.run.log({key: self.wandb.Image(str(path))}, step=step)

    def log_artifact(self, folder, name, kind, aliases=None):
        art = self.wandb.Artifact(name=name, type=kind)
        art.add_dir(str(folder))
        self.run.log_artifact(art, aliases=aliases or ["latest"])

    def summary(self, values):
        self.run.summary.update(values)

    def finish(self):
        self.run.finish()


def _settings(wandb):
    """Old wandb forked a process per run, which can hang under Hydra multirun: ask it for threads.
    wandb >= 0.18 runs a separate service and dropped the option."""
    try:
        return wandb.Settings(start_method="thread")
    except Exception:
        return wandb.Settings()


def make_tracker(logger_cfg, config: dict, out_dir: Path, name: str, group: str | None = None) -> Tracker:
    if logger_cfg.name == "none" or os.environ.get("WANDB_MODE") == "disabled":
        return Tracker()
    if logger_cfg.name == "wandb" and not dist.is_main():  # one run per job: rank 0 logs
        return Tracker()
    if logger_cfg.name == "wandb":
        return WandbTracker(logger_cfg, config, out_dir, name, group)
    from dd.errors import DDError

    raise DDError(f"logger '{logger_cfg.name}' is unknown; choose one of: none, wandb")
