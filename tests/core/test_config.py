"""Hydra configs: every group option composes, typos and wrong types fail at compose time,
unknown group choices are refused before Hydra starts."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from dd.cli.common import check_choices, models_of
from dd.config import CONF_DIR, register_configs
from dd.errors import DDError
from dd.registry import KINDS, registry

register_configs()

GROUPS = ("dataset", "model", "method", "eval", "logger")
OPTIONS = {g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in GROUPS}


def _kind_of_dataset(option: str) -> str:
    defaults = yaml.safe_load((CONF_DIR / "dataset" / f"{option}.yaml").read_text())["defaults"]
    return next(v for d in defaults if isinstance(d, dict) for k, v in d.items() if k.startswith("override /kind"))


def _kind_options() -> dict[str, dict[str, list[str]]]:
    """Each kind's options of every group it composes (images alone have the eval group)."""
    out = {}
    for kind in KINDS:
        out[kind] = {"dataset": [o for o in OPTIONS["dataset"] if _kind_of_dataset(o) == kind],
                     "model": models_of(kind),
                     "method": [o for o in OPTIONS["method"] if o in registry(kind).names()],
                     "logger": OPTIONS["logger"], **({"eval": OPTIONS["eval"]} if kind == "image" else {})}
    return out


KIND_OPTIONS = _kind_options()
# Composing costs ~0.3 s, so each composition picks one option of every group of its kind at once:
# combination i uses option i (mod the group's size), and every option appears in some combination.
COMBOS = [{g: opts[g][i % len(opts[g])] for g in opts}
          for opts in KIND_OPTIONS.values() for i in range(max(map(len, opts.values())))]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _yaml_values(group: str, option: str) -> dict:
    doc = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text()) or {}
    doc.pop("defaults", None)
    return doc


def test_every_option_belongs_to_a_kind_and_is_composed():
    for g in GROUPS:
        assert OPTIONS[g], f"conf/{g} has no options"
    covered = {(g, c[g]) for c in COMBOS for g in c}
    assert covered == {(g, o) for g in GROUPS for o in OPTIONS[g]}  # no option is left to no kind


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: ",".join(c.values()))
def test_options_compose_and_resolve(combo, monkeypatch, tmp_path):
    monkeypatch.setenv("DD_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DD_CACHE", str(tmp_path / "cache"))
    cfg = _compose([f"{g}={o}" for g, o in combo.items()])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for group, option in combo.items():
        # the option's own values land in the composed group, interpolations resolved
        for key, value in _yaml_values(group, option).items():
            got = resolved[group][key]
            if isinstance(value, str) and "${oc.env:DD_DATA,data}" in value:
                assert got == value.replace("${oc.env:DD_DATA,data}", str(tmp_path / "data"))
            elif isinstance(value, str) and "${" in value:
                assert isinstance(got, str) and "${" not in got, f"{group}={option}: {key}={got!r} unresolved"
            else:
                assert got == value, f"{group}={option}: {key}={got!r}, yaml says {value!r}"
    kind = resolved["dataset"]["kind"]
    assert {"buffer": "image", "prune": "lm"}.get(next(k for k in ("buffer", "prune", "eval") if k in resolved)) in (
        kind, None)
    if kind == "image":
        assert resolved["buffer"]["cache_dir"] == str(tmp_path / "cache")
    if kind == "lm":
        assert resolved["prune"]["cache_dir"] == str(tmp_path / "cache") and "ipc" not in resolved
    else:
        assert resolved["ipc"] == 10
    assert resolved["seed"] == 0  # the rest keeps its defaults


def test_each_kind_holds_only_its_own_sections():
    sections = {kind: set(_compose([f"dataset={KIND_OPTIONS[kind]['dataset'][0]}"]).keys()) for kind in KINDS}
    assert {"buffer", "teacher", "relabel", "eval", "inner", "ipc"} <= sections["image"]
    assert "prune" not in sections["image"]
    assert {"eval", "inner", "ipc"} <= sections["text"] and not sections["text"] & {"buffer", "teacher", "relabel", "prune"}
    assert "prune" in sections["lm"] and not sections["lm"] & {"buffer", "teacher", "relabel", "eval", "inner", "ipc"}


def test_defaults_compose():
    cfg = _compose([])
    assert cfg.dataset.name == "digits" and cfg.method.name == "random"
    assert cfg.model.name == "convnet" and cfg.model.width == 128
    assert cfg.logger.name == "none" and cfg.eval.epochs == 300
    assert cfg.dataset.stats is None and cfg.model.first_pad is None and cfg.eval.dsa_mode == "one"


@pytest.mark.parametrize("ipc", [1, 10, 50])
def test_experiments_follow_reference_preprocessing(ipc):
    cfg = _compose(["experiment=cifar100_mtt", f"ipc={ipc}"])
    assert cfg.dataset.name == "cifar100" and cfg.dataset.stats == "cifar10"
    cfg = _compose(["experiment=fashion_mnist_mtt", f"ipc={ipc}"])
    assert cfg.model.name == "convnet" and cfg.model.first_pad == 3 and cfg.model.depth == 3


def test_dd_data_default_when_env_unset(monkeypatch):
    monkeypatch.delenv("DD_DATA", raising=False)
    cfg = _compose(["dataset=mnist"])
    assert OmegaConf.to_container(cfg, resolve=True)["dataset"]["root"] == "data/mnist"


def test_overrides_are_typed():
    cfg = _compose(["ipc=3", "eval.epochs=7", "eval.lr=0.5", "model.width=8", "dataset.zca=true"])
    assert cfg.ipc == 3 and cfg.eval.epochs == 7 and cfg.eval.lr == 0.5
    assert cfg.model.width == 8 and cfg.dataset.zca is True


def _full_message(err: BaseException) -> str:
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eval.num_modles=3", "eval.num_modles"),  # typo
        ("ipc=abc", "ipc"),  # str for int
        ("eval.epochs=1.5", "eval.epochs"),  # float for int
        ("dataset.zca=maybe", "dataset.zca"),
        ("model.first_pad=wide", "model.first_pad"),
        ("method.feature_epochs=1.5", "method.feature_epochs"),
        ("method.iterations=3", "method.iterations"),  # an mtt key on a coreset method
    ],
)
def test_bad_override_fails_at_compose(override, key):
    with pytest.raises(HydraException) as info:
        _compose([override])
    assert key in str(info.value), str(info.value)
    value = override.split("=", 1)[1]
    assert value in _full_message(info.value)  # the offending value is shown too


def test_mtt_key_allowed_for_mtt():
    cfg = _compose(["method=mtt", "method.iterations=3"])
    assert cfg.method.iterations == 3


# --- check_choices -----------------------------------------------------------------


def _names(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_check_choices_unknown_dataset():
    with pytest.raises(DDError) as info:
        check_choices(["dataset=foo"])
    msg = str(info.value)
    assert "'foo'" in msg and "dataset" in msg
    for name in _names("dataset"):
        assert name in msg
    assert "\n" not in msg


def test_check_choices_multirun_list():
    with pytest.raises(DDError) as info:
        check_choices(["-m", "method=bar,random", "ipc=1"])
    msg = str(info.value)
    assert "'bar'" in msg and "'random'" not in msg
    for name in _names("method"):
        assert name in msg


@pytest.mark.parametrize("arg", ["+dataset=foo", "~model=nope", "model=convnet,nope", "experiment=nope", "eval=slow"])
def test_check_choices_prefixed_and_late_in_list(arg):
    with pytest.raises(DDError):
        check_choices([arg])


@pytest.mark.parametrize(
    "argv",
    [
        ["dataset=digits"],
        ["-m", "method=random,herding,kcenter", "dataset=digits,mnist"],
        ["model=convnet_bn", "eval=quick", "logger=wandb"],
        ["ipc=3", "seed=2", "model.width=8", "dataset.name=whatever", "hydra.run.dir=/x/y"],
        ["--multirun", "-c", "job", "--cfg=job"],
        ["-m", "method=choice(random,herding)"],  # Hydra sweep functions are left to Hydra
        [],
    ],
)
def test_check_choices_accepts(argv):
    check_choices(argv)


def test_conf_dir_is_the_package_config_tree():
    import dd

    assert CONF_DIR == Path(dd.__file__).resolve().parent / "conf"
    assert (CONF_DIR / "config.yaml").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["dataset=synthetic_topics", "buffer.epochs=3"], "'buffer' is not a key of text runs"),
    (["dataset=digits", "prune.keep=0.3"], "'prune' is not a key of image runs"),
    (["dataset=lm_files", "ipc=3"], "'ipc' is not a key of lm runs"),
    (["dataset=synthetic_topics", "eval=paper"], "eval=paper is not an option of text runs"),
    (["dataset=synthetic_topics", "method=mtt"], "method 'mtt' is an image method; text runs"),
    (["dataset=synthetic_topics", "model=convnet"], "model 'convnet' is an image model"),
    (["method=random_text"], "method 'random_text' is now method=random"),
    (["method=full_finetune"], "method 'full_finetune' is now method=full"),
    (["kind=text"], "the dataset declares it"),
])
def test_an_override_of_another_kind_is_refused_in_one_line(argv, needle):
    with pytest.raises(DDError, match=needle) as err:
        check_choices(argv)
    assert "\n" not in str(err.value)


def test_each_kind_takes_its_own_keys():
    check_choices(["dataset=synthetic_topics", "method=random", "eval.num_models=3", "inner.engine=unroll"])
    check_choices(["dataset=lm_files", "method=nll", "prune.keep=0.5", "model=gpt2_tiny"])
    check_choices(["dataset=digits", "method=random", "buffer.epochs=3", "+buffer.extra=1"])


@pytest.mark.parametrize("argv, needle", [
    (["ipc=abc"], "ipc=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (["method=mtt", "method.syn_stepz=3"], "syn_stepz"),
])
def test_a_typo_or_a_wrong_type_is_refused_in_one_line_before_hydra_starts(argv, needle):
    with pytest.raises(DDError, match=needle) as err:
        check_choices(argv)
    assert "\n" not in str(err.value)


def test_every_command_prints_its_version():
    from importlib.metadata import version

    from conftest import run_cli

    for prog in ("dd-distill", "dd-table"):  # a Hydra command and an argparse one
        r = run_cli(prog, "--version", in_process=True)
        assert r.returncode == 0 and r.stdout.strip() == f"{prog} (ddlab {version('ddlab')})", r.stdout + r.stderr
