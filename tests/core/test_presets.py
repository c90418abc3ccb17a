"""Experiment presets: every preset composes at each IPC it publishes, per-IPC values resolve, another IPC is
refused in one line; dd-presets lists them (and a user's own folder); the repository cites no file outside it."""

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dd.cli import presets as presets_cli
from dd.config import CONF_DIR, register_configs
from dd.errors import DDError
from dd.presets import RESOLVER, UnpublishedIPC, find_presets
from dd.table import load_reference

register_configs()

REPO = Path(__file__).resolve().parents[2]
PRESETS = find_presets()
BY_NAME = {p.name: p for p in PRESETS}
# preset name suffix -> method it runs (digits_baselines, topics_baselines, lm_*: the method comes from the command line)
METHODS = {"mtt": "mtt", "datm": "datm", "dc": "dc", "dsa": "dsa", "dm": "dm", "rded": "rded", "sre2l": "sre2l",
           "attn": "attention_labels", "sweep": "attention_labels"}
DATASETS = {"agnews": "ag_news", "attn": "ag_news", "topics": "synthetic_topics"}  # prefixes not a dataset's name
CASES = [(p.name, ipc) for p in PRESETS for ipc in (p.ipcs or [None])]


@pytest.fixture(scope="module")
def composed():
    """Every preset at every IPC it publishes (one Hydra context: composing is the slow part)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {(name, ipc): compose("config", overrides=[f"experiment={name}", *([f"ipc={ipc}"] if ipc else [])])
                for name, ipc in CASES}


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_the_listing_sees_every_preset_file_and_no_recipe():
    files = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    assert [p.name for p in PRESETS] == files and len(files) >= 40
    assert all(p.description and p.target for p in PRESETS), [p.name for p in PRESETS if not (p.description and p.target)]
    assert not any(p.name.startswith("recipe") for p in PRESETS)


@pytest.mark.parametrize("name,ipc", CASES, ids=[f"{n}-ipc{i}" for n, i in CASES])
def test_preset_composes_and_resolves_at_each_ipc_it_publishes(composed, name, ipc):
    cfg = composed[(name, ipc)]
    values = OmegaConf.to_container(cfg, resolve=True)  # every per-IPC table picks its value, or this raises
    assert not any(RESOLVER in s for s in _strings(values))
    if ipc is not None:
        assert values["ipc"] == ipc
    head, _, tail = name.rpartition("_")
    if tail in METHODS:
        assert values["method"]["name"] == METHODS[tail], name
        assert values["dataset"]["name"] == DATASETS.get(head, head), name


@pytest.mark.parametrize("name,ipc,expected", [
    ("cifar10_mtt", 1, {"method.syn_steps": 50, "method.max_start_epoch": 2, "method.lr_lr": 1e-7, "dataset.zca": True}),
    ("cifar10_mtt", 50, {"method.syn_steps": 30, "method.lr_img": 1000.0, "method.lr_teacher": 0.001, "dataset.zca": False}),
    ("cifar100_mtt", 50, {"method.batch_syn": 125, "method.expert_epochs": 2, "dataset.stats": "cifar10"}),
    ("tiny_imagenet_mtt", 10, {"method.batch_syn": 200, "method.lr_img": 10000.0, "buffer.num_experts": 100}),
    ("fashion_mnist_mtt", 50, {"method.lr_img": 1000.0, "method.lr_teacher": 0.01, "dataset.zca": False, "model.first_pad": 3}),
    ("cifar10_dc", 10, {"method.outer_loop": 10, "method.inner_loop": 50, "eval.epochs": 300, "eval.dsa": False}),
    ("mnist_dsa", 50, {"method.outer_loop": 50, "method.inner_loop": 10, "eval.epochs": 1000, "model.depth": 3}),
    ("cifar10_dm", 100, {"method.lr_img": 10.0, "method.iterations": 20000}),
    ("cifar10_datm", 1, {"method.initial_max_start_epoch": None, "method.window_iterations": 0, "method.batch_syn": 10,
                         "method.lr_y": 5.0, "method.skip_loss_above": 1.1, "eval.batch_size": 128}),
    ("cifar100_datm", 10, {"method.lr_y": 2.0, "method.max_start_epoch": 20, "method.lr_img": 1000.0}),
    ("digits_mtt", 1, {"buffer.num_experts": 16, "method.iterations": 300, "method.syn_steps": 80, "model.width": 32}),
    ("digits_datm", 10, {"buffer.num_experts": 8, "method.window_iterations": 100, "method.lr_y": 2.0}),
    ("cifar100_rded", 10, {"eval.batch_size": 25, "eval.lr": 0.002, "method.factor": 1, "eval.labels": "stored"}),
    ("cifar100_sre2l", 50, {"eval.batch_size": 128, "eval.temperature": 30.0, "model.name": "tv_resnet18"}),
    ("digits_sre2l", 10, {"eval.batch_size": 50, "teacher.epochs": 100, "teacher.model.width": 32}),
    ("agnews_attn", 1, {"method.inner_steps": 1, "method.init": "random", "dataset.max_length": 512}),
])
def test_per_ipc_values_resolve_to_the_published_ones(composed, name, ipc, expected):
    cfg = composed[(name, ipc)]
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected


def _override(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("name", [p.name for p in PRESETS if p.per_ipc])
def test_an_unpublished_ipc_is_refused_in_one_line_naming_what_to_give(name):
    from dd.config import compose as dd_compose

    with pytest.raises(UnpublishedIPC) as e:
        OmegaConf.to_container(dd_compose([f"experiment={name}", "ipc=7"]), resolve=True)
    msg = str(e.value)
    published = BY_NAME[name].ipcs
    assert "\n" not in msg and msg.startswith(f"ipc=7: this preset publishes ipc {', '.join(map(str, published))}; "
                                               "for ipc 7 give ")
    assert isinstance(e.value, DDError)  # the CLIs print a DDError as one line


@pytest.mark.parametrize("name", ["cifar10_mtt", "cifar100_datm", "mnist_dc", "digits_mtt", "agnews_attn"])
def test_giving_the_named_values_by_hand_runs_an_unpublished_ipc(name):
    from dd.config import compose as dd_compose

    with pytest.raises(UnpublishedIPC) as e:
        OmegaConf.to_container(dd_compose([f"experiment={name}", "ipc=7"]), resolve=True)
    given = [w[: -len("=...")] for w in str(e.value).split() if w.endswith("=...")]
    assert given
    # every named value given (here: the preset's own at its first IPC): ipc 7 composes and resolves
    ref = dd_compose([f"experiment={name}", f"ipc={BY_NAME[name].ipcs[0]}"])
    fixed = dd_compose([f"experiment={name}", "ipc=7", *[f"{k}={_override(OmegaConf.select(ref, k))}" for k in given]])
    assert OmegaConf.to_container(fixed, resolve=True)["ipc"] == 7


def test_the_cli_refuses_an_unpublished_ipc_in_one_line_naming_the_preset(tmp_path):
    r = run_cli("dd-distill", "experiment=cifar10_mtt", "ipc=20", f"hydra.run.dir={tmp_path / 'run'}", in_process=True)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "dd-distill: error: ipc=20: preset cifar10_mtt publishes ipc 1, 10, 50; for ipc 20 give ")
    assert "method.syn_steps=..." in lines[0] and "dataset.zca=..." in lines[0]


def test_dd_presets_lists_names_ipcs_descriptions_and_targets():
    r = run_cli("dd-presets")  # a real process: dd-presets end to end
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
    out = r.stdout
    assert "cifar10_mtt  (ipc 1, 10, 50)\n" in out
    assert "    target: 46.3±0.8 / 65.3±0.7 / 71.6±0.2 at ipc 1 / 10 / 50 (MTT paper, Table 1)\n" in out
    assert "cifar100_sre2l  (ipc 50)\n" in out  # the recipe's ipc 1/10 batch table is replaced by its own
    assert "digits_dc  (ipc 1 by default; any ipc runs the same settings)\n" in out
    assert "recipe" not in [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]


def test_dd_presets_sees_a_users_folder_whose_presets_inherit_the_packages(tmp_path, capsys):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "my_mtt.yaml").write_text(
        "# @package _global_\n# CIFAR-10 MTT with my own ipc 10 and 20 student steps.\n# target: none (mine)\n"
        "defaults:\n  - cifar10_mtt\n\n"
        'method:\n  syn_steps: "${per_ipc:${ipc},{10: 40, 20: 40}}"\n')
    (tmp_path / "experiment" / "cifar10_mtt.yaml").write_text("# @package _global_\n# shadowed\n")
    presets_cli.main(["--config-dir", str(tmp_path)])
    out = capsys.readouterr().out
    # my table and the inherited ones publish only ipc 10 together; the package's cifar10_mtt wins its name
    assert "my_mtt  (ipc 10)\n    CIFAR-10 MTT with my own ipc 10 and 20 student steps.\n    target: none (mine)\n" in out
    assert "shadowed" not in out
    # Hydra composes it the same way (a user's folder on the search path, as --config-dir adds it)
    from dd.config import compose as dd_compose

    cfg = dd_compose(["experiment=my_mtt", "ipc=10", f"hydra.searchpath=[file://{tmp_path}]"])
    assert (cfg.method.syn_steps, cfg.method.lr_teacher, cfg.dataset.name) == (40, 0.001, "cifar10")


def test_dd_presets_refuses_a_folder_without_experiments(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        presets_cli.main(["--config-dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no experiment/ folder" in err


def test_published_tables_load_in_dd_table_and_name_their_sources():
    tables = sorted((REPO / "experiments").glob("*/published.yaml"))
    assert len(tables) >= 9
    for path in tables:
        ref = load_reference(path)
        doc = yaml.safe_load(path.read_text())
        methods = {m for m, _, _ in ref}
        assert methods <= set(doc.get("sources") or {}), f"{path}: methods without a source: {methods - set(doc['sources'])}"


def test_the_repository_cites_no_file_outside_it():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    outside = ["shared/" + name for name in ("reference", "golden")]  # spelled apart: this file must not match
    bad = []
    for f in files:
        p = REPO / f
        if p.is_file() and p.suffix in (".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".json", ""):
            text = p.read_text(errors="replace")
            if any(o in text for o in outside):
                bad.append(f)
    assert not bad
