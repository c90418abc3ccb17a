"""Per-IPC recipe values and the preset listing.

A preset (dd/conf/experiment/<name>.yaml) is one paper recipe on one dataset; the images per class come
from the command line (`dd-distill experiment=cifar10_mtt ipc=10`). A value the paper publishes per IPC
is a table in the preset, picked by the run's ipc when the config resolves:

    syn_steps: "${per_ipc:${ipc},{1: 50, 10: 30, 50: 30}}"

(quoted: YAML reads an unquoted `{1: 50}` as a mapping). An ipc missing from a table is refused with one
line naming the preset's IPCs and the values to give by hand. A preset publishes the IPCs that all its
tables (its own and those of the recipe files it includes) give; one with no table, the ipc it sets, if any.

Header of a preset file, read by `dd-presets`: after `# @package _global_`, the first comment line is its
one-line description, and a `# target:` line names the published figure it aims at (paper and table).
"""

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from dd.errors import DDError

RESOLVER = "per_ipc"
_CALL = re.compile(r"\$\{" + RESOLVER + r":\s*\$\{ipc\}\s*,\s*\{(?P<table>[^{}]*)\}\s*\}")
_KEY = re.compile(r"(?:^|,)\s*(-?\d+)\s*:")


class UnpublishedIPC(DDError, InterpolationResolutionError):
    """An ipc outside a preset's tables. Also an InterpolationResolutionError marked initialised, so OmegaConf
    re-raises it as it is (one line, still a DDError for the CLI) instead of wrapping it with key details."""

    _initialized = True

    def __init__(self, msg: str):
        OmegaConfBaseException.__init__(self)
        Exception.__init__(self, msg)


def table_ipcs(text: str) -> list[set[int]]:
    """The IPC keys of each per_ipc table in `text` (a YAML file or one value)."""
    return [{int(k) for k in _KEY.findall(m.group("table"))} for m in _CALL.finditer(text)]


def _tables(node, prefix: str = "") -> dict[str, set[int]]:
    """{dotted key: its table's IPCs} for every value of a plain (unresolved) container that is a per_ipc call."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    found = {}
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, str) and RESOLVER in v:
            for ipcs in table_ipcs(v):
                found[key] = ipcs
        else:
            found.update(_tables(v, key))
    return found


def _preset_name() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            name = HydraConfig.get().runtime.choices.get("experiment")
            if name:
                return f"preset {name}"
    except Exception:  # noqa: BLE001 - only a nicer message depends on it
        pass
    return "this preset"


def _ipcs(values) -> str:
    return ", ".join(map(str, sorted(values)))


def per_ipc(ipc, table, *, _node_, _root_):
    """The value `table` gives for `ipc`; else a one-line refusal that names every per-IPC key left to give."""
    if not isinstance(table, dict) or not table:
        raise DDError(f"{_node_._get_full_key(None)}: per_ipc needs a table {{ipc: value, ...}}, got {table!r}")
    try:
        ipc = int(ipc)
    except (TypeError, ValueError):
        raise DDError(f"ipc={ipc!r} is not allowed; it must be a positive integer") from None
    if ipc in table:
        return table[ipc]
    tables = _tables(OmegaConf.to_container(_root_, resolve=False)) or {_node_._get_full_key(None): set(table)}
    published = set.intersection(*tables.values())
    missing = " ".join(f"{k}=..." for k, ipcs in tables.items() if ipc not in ipcs)
    raise UnpublishedIPC(f"ipc={ipc}: {_preset_name()} publishes ipc {_ipcs(published) or 'none'}; for ipc {ipc} "
                         f"give {missing} yourself")


def register_resolvers() -> None:
    """Make `${per_ipc:...}` known to OmegaConf (idempotent; every dd-* entry point calls it)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, per_ipc)


# --- the listing -----------------------------------------------------------------------------------


@dataclass
class Preset:
    name: str
    path: Path
    description: str
    target: str
    ipcs: list[int] | None  # the IPCs of its per-IPC tables; else [the ipc it sets]; None: neither
    per_ipc: bool  # ipcs come from per-IPC tables (another ipc is refused); else any ipc runs the same settings


def _header(text: str) -> tuple[str, str]:
    """(description, target): the first comment line after the package line, and the `# target:` line."""
    description, target = "", ""
    for line in text.splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        body = line.lstrip("#").strip()
        if body.startswith("@package"):
            continue
        if body.lower().startswith("target:"):
            target = target or body.split(":", 1)[1].strip()
        elif not description:
            description = body
    return description, target


def _merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` as OmegaConf merges config files: mappings key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _find(name: str, here: Path, dirs: list[Path]) -> Path | None:
    if name.startswith("/"):  # absolute in the config tree: /experiment/recipe/mtt
        candidates = [d / f"{name.lstrip('/')}.yaml" for d in dirs]
    else:  # relative to the including file's folder, as Hydra resolves it in any of the config folders
        rel = here.relative_to(next(d for d in dirs if here.is_relative_to(d))).parent
        candidates = [d / rel / f"{name}.yaml" for d in dirs]
    return next((c for c in candidates if c.is_file()), None)


def _composed(path: Path, dirs: list[Path], seen: frozenset = frozenset()) -> dict:
    """The values a preset file sets once the experiment files its defaults list includes are merged in their
    order (_self_ last unless placed); group choices (override /method: ...) are left to Hydra."""
    if path in seen:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    own = {k: v for k, v in data.items() if k != "defaults"}
    entries = list(data.get("defaults") or [])
    if "_self_" not in entries:
        entries.append("_self_")
    merged: dict = {}
    for entry in entries:
        if entry == "_self_":
            merged = _merge(merged, own)
        elif isinstance(entry, str):  # another experiment file (a plain entry; optionally @package)
            found = _find(entry.split("@", 1)[0].strip(), path, dirs)
            if found is not None:
                merged = _merge(merged, _composed(found, dirs, seen | {path}))
    return merged


def find_presets(config_dirs: list[str | Path] = ()) -> list[Preset]:
    """Every preset in the package's config tree, then in each user config folder (its experiment/*.yaml),
    sorted by name. A user preset with a package preset's name is left out: Hydra finds the package's first."""
    from dd.config import CONF_DIR

    dirs = [Path(CONF_DIR)] + [Path(d).expanduser().resolve() for d in config_dirs]
    for d in dirs[1:]:
        if not (d / "experiment").is_dir():
            raise DDError(f"--config-dir {d}: it has no experiment/ folder (presets are <dir>/experiment/<name>.yaml)")
    presets = {}
    for d in dirs:
        for path in sorted((d / "experiment").glob("*.yaml")):
            if path.stem in presets:
                continue
            text = path.read_text()
            description, target = _header(text)
            try:
                values = _composed(path, dirs)
            except yaml.YAMLError as e:
                raise DDError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
            tables = list(_tables(values).values())
            if tables:
                ipcs = sorted(set.intersection(*tables))
            else:
                ipcs = [values["ipc"]] if isinstance(values.get("ipc"), int) else None
            presets[path.stem] = Preset(path.stem, path, description, target, ipcs, bool(tables))
    return sorted(presets.values(), key=lambda p: p.name)


def format_presets(presets: list[Preset]) -> str:
    """One block per preset: name and IPCs, then its description and target, indented."""
    lines = []
    for p in presets:
        if p.per_ipc:
            ipcs = "ipc " + _ipcs(p.ipcs)
        elif p.ipcs:
            ipcs = f"ipc {_ipcs(p.ipcs)} by default; any ipc runs the same settings"
        else:
            ipcs = "any ipc"
        lines.append(f"{p.name}  ({ipcs})")
        lines.append(f"    {p.description or '(no description)'}")
        lines.append(f"    target: {p.target or '(none given)'}")
    return "\n".join(lines)
