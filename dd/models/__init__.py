"""Model zoo for dataset distillation and the flat-parameter functional wrapper."""

from dd.models.bert import TextClassifier, load_backbone
from dd.models.classic import MLP, VGG11, AlexNet, LeNet
from dd.models.convnet import ConvNet
from dd.models.factory import MODEL_NAMES, build_model, model_has_state
from dd.models.functional import FlatModel
from dd.models.resnet import ResNet18, ResNet18_AP

__all__ = [
    "MODEL_NAMES",
    "AlexNet",
    "ConvNet",
    "FlatModel",
    "LeNet",
    "MLP",
    "ResNet18",
    "ResNet18_AP",
    "TextClassifier",
    "VGG11",
    "build_model",
    "load_backbone",
    "model_has_state",
]
