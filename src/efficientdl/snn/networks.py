"""The paper's spiking networks (TSSL-BP, Zhang & Li, NeurIPS 2020, and its official code), each
registered in the core registry as kind "snn" with its example input shape:

    create("snn", "mnist_cnn", T=8, tau_s=4.0)   # or build("mnist_cnn", T=8, tau_s=4.0)

A builder takes the fields of `NeuronOptions` (every neuron's settings) and of `NetworkOptions`
(T, dropout, dropout_mask, fold_static_input, conv_init) as keyword arguments; their defaults
live there.
"""

from __future__ import annotations

from dataclasses import dataclass

from efficientdl.core.errors import ConfigError
from efficientdl.core.registry import create, names, register
from efficientdl.snn.layers import (
    PSPEncoder,
    SpikingConv2d,
    SpikingDropout,
    SpikingLinear,
    SumPool2d,
)
from efficientdl.snn.network import SpikingNetwork
from efficientdl.snn.options import NetworkOptions, NeuronOptions

BUILD_KEYS = NetworkOptions.names() + NeuronOptions.names()
"""Every keyword a network builder takes."""


def list_models() -> list[str]:
    """Names of every registered spiking network."""
    return names("snn")


def build(name: str, **overrides) -> SpikingNetwork:
    """Build registered network `name` with its defaults and `overrides` (BUILD_KEYS)."""
    if name not in list_models():
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return create("snn", name, **overrides)


@dataclass(frozen=True)
class _Layers:
    """Shortcuts that give every layer the network's neuron and dropout settings."""

    neuron: NeuronOptions
    network: NetworkOptions

    @classmethod
    def of(cls, settings: dict) -> _Layers:
        """Split builder keywords into neuron and network options (ConfigError on others)."""
        unknown = sorted(set(settings) - set(BUILD_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown override {unknown[0]!r} for build(); known: {', '.join(BUILD_KEYS)}"
            )
        network = {k: v for k, v in settings.items() if k in NetworkOptions.names()}
        neuron = {k: v for k, v in settings.items() if k in NeuronOptions.names()}
        return cls(NeuronOptions(**neuron), NetworkOptions(**network))

    def conv(self, cin, cout, k, padding=0, weight_scale=1.0):
        return SpikingConv2d(
            cin,
            cout,
            k,
            padding=padding,
            weight_scale=weight_scale,
            init=self.network.conv_init,
            neuron=self.neuron,
        )

    def fc(self, fin, fout, weight_scale=1.0):
        return SpikingLinear(fin, fout, weight_scale=weight_scale, neuron=self.neuron)

    def pool(self):
        return SumPool2d(2)

    def drop(self):
        return SpikingDropout(self.network.dropout, mask=self.network.dropout_mask)

    def network_of(self, layers, *, static: bool) -> SpikingNetwork:
        """`layers` behind a PSP encoder; a static image is repeated over T steps."""
        encoder = PSPEncoder(self.neuron.tau_s, T=self.network.T if static else None)
        return SpikingNetwork(encoder, layers, fold_static_input=self.network.fold_static_input)


@register("snn", "mnist_cnn", input_shape=(1, 28, 28))
def mnist_cnn(**settings) -> SpikingNetwork:
    """15C5-P2-40C5-P2-300-10 on 1×28×28."""
    f = _Layers.of(settings)
    layers = [
        f.conv(1, 15, 5),
        f.pool(),
        f.conv(15, 40, 5),
        f.pool(),
        f.fc(640, 300),
        f.fc(300, 10),
    ]
    return f.network_of(layers, static=True)


@register("snn", "fmnist_mlp", input_shape=(1, 28, 28))
def fmnist_mlp(**settings) -> SpikingNetwork:
    """400-400-10 on flattened 784."""
    f = _Layers.of(settings)
    return f.network_of([f.fc(784, 400), f.fc(400, 400), f.fc(400, 10)], static=True)


@register("snn", "fmnist_cnn", input_shape=(1, 28, 28))
def fmnist_cnn(**settings) -> SpikingNetwork:
    """32C5-P2-64C5-P2-1024-10 (padding 2) on 1×28×28."""
    f = _Layers.of(settings)
    layers = [
        f.conv(1, 32, 5, 2),
        f.pool(),
        f.conv(32, 64, 5, 2),
        f.pool(),
        f.fc(3136, 1024),
        f.fc(1024, 10),
    ]
    return f.network_of(layers, static=True)


@register("snn", "nmnist_cnn", input_shape=(2, 34, 34), T=30, tau_m=8.0, tau_s=4.0)
def nmnist_cnn(**settings) -> SpikingNetwork:
    """12C5-P2-64C5-P2-10 on event frames [T, N, 2, 34, 34] (the paper's T = 30, τm = 8, τs = 4)."""
    f = _Layers.of(settings)
    layers = [f.conv(2, 12, 5, 1), f.pool(), f.conv(12, 64, 5), f.pool(), f.fc(2304, 10)]
    return f.network_of(layers, static=False)


def _cifar(f: _Layers, ch, fcs) -> SpikingNetwork:
    """Five 3×3 convs (weight scale 5, pooling after the 2nd and 3rd), `fcs` hidden linears, 10
    outputs, dropout after every hidden layer."""
    c1, c2, c3, c4, c5 = ch
    s = 5.0
    layers = [
        f.conv(3, c1, 3, 1, s),
        f.drop(),
        f.conv(c1, c2, 3, 1, s),
        f.pool(),
        f.drop(),
        f.conv(c2, c3, 3, 1, s),
        f.pool(),
        f.drop(),
        f.conv(c3, c4, 3, 1, s),
        f.drop(),
        f.conv(c4, c5, 3, 1, s),
        f.drop(),
    ]
    sizes = [c5 * 8 * 8, *fcs]
    for i in range(len(fcs)):
        layers.append(f.fc(sizes[i], sizes[i + 1]))
        layers.append(f.drop())
    layers.append(f.fc(sizes[-1], 10))
    return f.network_of(layers, static=True)


@register("snn", "cifar10_cnn1", input_shape=(3, 32, 32))
def cifar10_cnn1(**settings) -> SpikingNetwork:
    """96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024-10 (weight scale 5, dropout 0.2)."""
    return _cifar(_Layers.of(settings), (96, 256, 384, 384, 256), (1024, 1024))


@register("snn", "cifar10_cnn2", input_shape=(3, 32, 32))
def cifar10_cnn2(**settings) -> SpikingNetwork:
    """128C3-256C3-P2-512C3-P2-1024C3-512C3-1024-512-10 (ours: CNN1's settings)."""
    return _cifar(_Layers.of(settings), (128, 256, 512, 1024, 512), (1024, 512))
