"""The run configuration: the root every kind shares, where the config tree lives, and its registration.

Hydra composes a run from the package's config tree (dd/conf). The dataset declares the run's kind
(`override /kind@_global_.kind: text` in its defaults); that picks the kind's root schema, which holds
only the kind's own sections (dd/image/kind.py: eval, inner, buffer, teacher, relabel; dd/text/kind.py:
eval, inner; dd/lm/kind.py: prune), and the method's schema from that kind's registry
(`method_schema: <kind>_<method>`). So a typo, a wrong type or a section of another kind fails when
Hydra composes. Each schema sits beside the code it configures.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dd.tracking import LoggerConfig

# the config tree is package data: found beside this module wherever dd is installed (a wheel, an editable
# checkout); users add their own folders through Hydra's search path (--config-dir, hydra.searchpath)
CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class RunConfig:
    """What every run's config holds, whatever its kind."""

    dataset: Any = MISSING  # the dataset's schema declares the kind
    model: Any = MISSING
    method: Any = MISSING  # the method's schema, from its kind's registry
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    device: str = "${oc.env:DD_DEVICE,auto}"  # auto | cpu | cuda | cuda:N (default: $DD_DEVICE, else auto)
    cudnn_benchmark: bool = True  # CUDA: let cuDNN pick its fastest algorithm per input shape (dd.precision)
    resume: bool = False  # continue from the run folder's checkpoint (give the folder with hydra.run.dir=...)
    export: bool = True
    progress: bool = True
    run_name: str = "${method.name}_${dataset.name}"  # names the run's folder (hydra.run.dir)


def kind_roots() -> dict[str, type]:
    """{kind: its root schema}."""
    from dd.image.kind import ImageRunConfig
    from dd.lm.kind import LMRunConfig
    from dd.text.kind import TextRunConfig

    return {"image": ImageRunConfig, "text": TextRunConfig, "lm": LMRunConfig}


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore, where the YAML files of dd/conf extend them."""
    from dd.data.images import ImageDatasetConfig
    from dd.data.text import TextDatasetConfig
    from dd.image.evaluate import EvalConfig
    from dd.image.kind import EvalSetConfig
    from dd.lm.config import LMCorpusConfig, LMModelConfig
    from dd.models.bert import TextModelConfig
    from dd.models.factory import ModelConfig
    from dd.presets import register_resolvers
    from dd.registry import schemas

    register_resolvers()  # ${per_ipc:...} in the presets (dd.presets)
    cs = ConfigStore.instance()
    for kind, root in kind_roots().items():
        cs.store(group="kind", name=f"{kind}_root", node=root, package="_global_")
    for name, schema in schemas().items():  # <kind>_<method>: each beside its method (dd.registry)
        cs.store(group="method_schema", name=name, node=schema)
    cs.store(name="eval_set_schema", node=EvalSetConfig)
    cs.store(group="dataset", name="image_schema", node=ImageDatasetConfig)
    cs.store(group="dataset", name="text_schema", node=TextDatasetConfig)
    cs.store(group="dataset", name="lm_corpus_schema", node=LMCorpusConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="model", name="text_model_schema", node=TextModelConfig)
    cs.store(group="model", name="lm_model_schema", node=LMModelConfig)
    cs.store(group="eval", name="eval_schema", node=EvalConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config"):
    """The run config that `dd-distill <overrides>` (config_name="eval_set": `dd-eval`) would compose, for
    Python users and tests: the package's config tree with Hydra's own composition and checks."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))
