"""The 2-D classification networks of MONAI a bundle may name, each split at its Grad-CAM layer.

Every allowed network ends in global average pooling and one linear layer. `split` cuts it
into a trunk (input to the last feature maps, the Grad-CAM target layer) and a head (pooling,
flatten, dropout, linear), whose composition computes exactly what the network's own `forward`
does. Inference runs the trunk once; the probabilities and every Grad-CAM map come from the
trunk's output (`explain.maps_from_features`).

| network (monai.networks.nets) | Grad-CAM layer |
|---|---|
| DenseNet, DenseNet121/169/201/264 | class_layers.relu (after the final norm) |
| ResNet | layer4 |
| SENet, SENet154, SEResNet50/101/152, SEResNext50/101 | layer4 |
| EfficientNetBN | _swish after _bn1 (the head convolution) |
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.nets.densenet import DenseNet
from monai.networks.nets.efficientnet import EfficientNet
from monai.networks.nets.resnet import ResNet
from monai.networks.nets.senet import SENet

DENSENETS = ("DenseNet", "DenseNet121", "DenseNet169", "DenseNet201", "DenseNet264")
SENETS = (
    "SENet",
    "SENet154",
    "SEResNet50",
    "SEResNet101",
    "SEResNet152",
    "SEResNext50",
    "SEResNext101",
)
ALLOWED = (*DENSENETS, "ResNet", *SENETS, "EfficientNetBN")


@dataclass(frozen=True, eq=False, slots=True)
class Split:
    """A network as trunk (input -> final feature maps) and head (feature maps -> logits)."""

    trunk: torch.nn.Module
    head: torch.nn.Sequential


def _resnet_trunk(net: Any, x: torch.Tensor) -> torch.Tensor:
    x = net.act(net.bn1(net.conv1(x)))
    if not net.no_max_pool:
        x = net.maxpool(x)
    out: torch.Tensor = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return out


def _senet_trunk(net: Any, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = net.features(x)
    return out


def _efficientnet_trunk(net: Any, x: torch.Tensor) -> torch.Tensor:
    x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(x))))
    x = net._blocks(x)
    out: torch.Tensor = net._swish(net._bn1(net._conv_head(net._conv_head_padding(x))))
    return out


class _Trunk(torch.nn.Module):
    """A network's layers up to its last feature maps, in the order its `forward` runs them."""

    def __init__(
        self, network: torch.nn.Module, run: Callable[[Any, torch.Tensor], torch.Tensor]
    ) -> None:
        super().__init__()
        self.network = network
        self.run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(self.network, x)


def _head(**layers: torch.nn.Module | None) -> torch.nn.Sequential:
    return torch.nn.Sequential(OrderedDict((k, v) for k, v in layers.items() if v is not None))


def split(network: torch.nn.Module) -> Split:
    """The trunk and head of an allowed network; TypeError for any other module."""
    if isinstance(network, DenseNet):
        head = network.class_layers
        if not isinstance(head, torch.nn.Sequential):
            raise TypeError("a DenseNet without its class_layers head")
        return Split(trunk=network.features, head=head)
    if isinstance(network, ResNet):
        if network.fc is None:
            raise TypeError("a ResNet without its fully connected layer (feed_forward=False)")
        return Split(
            trunk=_Trunk(network, _resnet_trunk),
            head=_head(pool=network.avgpool, flatten=torch.nn.Flatten(), out=network.fc),
        )
    if isinstance(network, SENet):
        return Split(
            trunk=_Trunk(network, _senet_trunk),
            head=_head(
                pool=network.adaptive_avg_pool,
                dropout=network.dropout,
                flatten=torch.nn.Flatten(),
                out=network.last_linear,
            ),
        )
    if isinstance(network, EfficientNet):
        return Split(
            trunk=_Trunk(network, _efficientnet_trunk),
            head=_head(
                pool=network._avg_pooling,
                flatten=torch.nn.Flatten(),
                dropout=network._dropout,
                out=network._fc,
            ),
        )
    raise TypeError(f"{type(network).__name__} is not one of the networks a bundle may use")


def in_channels(network: torch.nn.Module) -> int:
    """The channels of the network's input (its first convolution's)."""
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            return int(module.in_channels)
    raise TypeError(f"{type(network).__name__} has no 2-D convolution")
