"""TSSL-BP (Zhang & Li, NeurIPS 2020): deep spiking networks trained in few time steps."""

from efficientdl.snn.functional import lif_states, psp, tsslbp, tsslbp_backward
from efficientdl.snn.layers import (
    PSPEncoder,
    SpikingConv2d,
    SpikingDropout,
    SpikingLinear,
    SumPool2d,
    TSSLBPNeuron,
)
from efficientdl.snn.losses import count_loss, kernel_loss, kernel_target, predict
from efficientdl.snn.network import SpikingNetwork
from efficientdl.snn.nir_io import export_nir, import_nir
from efficientdl.snn.options import NetworkOptions, NeuronOptions

__all__ = [
    "NetworkOptions",
    "NeuronOptions",
    "PSPEncoder",
    "SpikingConv2d",
    "SpikingDropout",
    "SpikingLinear",
    "SpikingNetwork",
    "SumPool2d",
    "TSSLBPNeuron",
    "count_loss",
    "export_nir",
    "import_nir",
    "kernel_loss",
    "kernel_target",
    "lif_states",
    "predict",
    "psp",
    "tsslbp",
    "tsslbp_backward",
]
