"""Generic CNNs shared by the methods: torchvision-compatible ResNets and a small CNN."""

from efficientdl.models.registry import build_model, get_builder, list_models, register_model
from efficientdl.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from efficientdl.models.small_cnn import SmallCNN, small_cnn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SmallCNN",
    "build_model",
    "get_builder",
    "list_models",
    "register_model",
    "resnet18",
    "resnet34",
    "resnet50",
    "small_cnn",
]
