"""`SpikingNetwork`: an input encoder followed by spiking layers, output trace [T, N, K]."""

from __future__ import annotations

import torch
from torch import nn

from efficientdl.snn.functional import static_encoding_factors
from efficientdl.snn.layers import PSPEncoder, SpikingConv2d, SpikingLinear, TSSLBPNeuron


class SpikingNetwork(nn.Module):
    """Encoder + layers; `fold_static_input` runs layer 1's weights once per static image."""

    def __init__(self, encoder: PSPEncoder, layers, *, fold_static_input: bool = True):
        super().__init__()
        self.encoder = encoder
        self.layers = nn.Sequential(*layers)
        self.fold_static_input = fold_static_input

    @property
    def T(self) -> int | None:
        return self.encoder.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.layers[0]
        if (
            self.fold_static_input
            and self.encoder.T is not None
            and isinstance(first, SpikingConv2d | SpikingLinear)
        ):
            # W ∗ (c[t]·x) = c[t]·(W ∗ x): one weight pass on N images, scaled per step.
            c = static_encoding_factors(
                self.encoder.T, self.encoder.tau_s, dtype=x.dtype, device=x.device
            )
            drive = first.synapse(x)
            current = c.reshape(-1, *([1] * drive.dim())) * drive
            out = first.neuron(current)
            rest = self.layers[1:]
        else:
            out, rest = self.encoder(x), self.layers
        return rest(out)

    def neurons(self) -> list[TSSLBPNeuron]:
        """All spiking neurons, input to output."""
        return [m for m in self.modules() if isinstance(m, TSSLBPNeuron)]

    def weight_layers(self) -> list[nn.Module]:
        """All conv/linear spiking layers, input to output."""
        return [m for m in self.modules() if isinstance(m, SpikingConv2d | SpikingLinear)]

    @torch.no_grad()
    def clamp_weights_(self, bound: float = 4.0) -> None:
        """Clamp every conv/linear weight to [−bound, bound] in place (after each step)."""
        for layer in self.weight_layers():
            layer.weight.clamp_(-bound, bound)

    def set_neuron_options(self, **options) -> None:
        """Set TSSL-BP options on every neuron (e.g. switch the warm-up surrogate off)."""
        for neuron in self.neurons():
            neuron.set_options(**options)
