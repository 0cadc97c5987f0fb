"""Generic CNNs shared by the methods: torchvision-compatible ResNets and a small CNN, each
registered as a `model` entry of `efficientdl.core.registry` (`create("model", "resnet18")`)."""

from efficientdl.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from efficientdl.models.small_cnn import SmallCNN, small_cnn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SmallCNN",
    "resnet18",
    "resnet34",
    "resnet50",
    "small_cnn",
]
