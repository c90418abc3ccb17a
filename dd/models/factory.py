"""Build a model by name, validating the options a config passes through."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dd.errors import DDError
from dd.models.classic import MLP, VGG11, AlexNet, LeNet
from dd.models.convnet import ConvNet, check_image_size
from dd.models.resnet import ResNet18, ResNet18_AP
from dd.models.torchvision_nets import TorchvisionResNet18

MODEL_NAMES = ("convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18", "resnet18_ap", "tv_resnet18")

# name -> (class, the options it accepts)
_REGISTRY: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "convnet": (ConvNet, ("width", "depth", "norm", "act", "pool", "first_pad")),
    "mlp": (MLP, ()),
    "lenet": (LeNet, ()),
    "alexnet": (AlexNet, ()),
    "vgg11": (VGG11, ("norm",)),
    "resnet18": (ResNet18, ("norm",)),
    "resnet18_ap": (ResNet18_AP, ("norm",)),
    "tv_resnet18": (TorchvisionResNet18, ("stem",)),  # torchvision's, for its checkpoints (SRe2L / RDED teachers)
}


@dataclass
class ModelConfig:
    name: str = "convnet"
    kind: str = "image"  # an image model (dd.pipeline refuses it for another kind's dataset)
    width: int | None = None
    depth: int | None = None
    norm: str | None = None
    act: str | None = None
    pool: str | None = None
    first_pad: int | None = None  # convnet: the first conv's padding; null = 1 (3 turns 28x28 into 32x32)
    stem: str | None = None  # tv_resnet18: cifar (3x3 conv, no max-pool; null) | imagenet (torchvision's own)


def build_model(
    name: str, channels: int, num_classes: int, image_size: tuple[int, int], **options
) -> nn.Module:
    """Instantiate model `name`.

    Options set to None mean "use the model's default", so a shared config can
    carry every key; a non-None option the model does not take is a mistake.
    """
    if name not in _REGISTRY:
        raise DDError(f"model {name!r} is unknown; choose one of: {', '.join(MODEL_NAMES)}")
    cls, accepted = _REGISTRY[name]
    for key, value in (("channels", channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DDError(f"{key} {value!r} is invalid; expected a positive integer")
    kwargs = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in accepted:
            allowed = ", ".join(accepted) if accepted else "none"
            raise DDError(f"option {key!r} does not apply to model {name!r}; it accepts: {allowed}")
        kwargs[key] = value
    return cls(channels, num_classes, check_image_size(image_size), **kwargs)


def model_has_state(model: nn.Module) -> bool:
    """True if forward updates BatchNorm running stats, i.e. the model is not a
    pure function of its parameters."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules()
    )
