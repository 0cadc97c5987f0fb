"""The registry sweep: every registered model and spiking network runs a batch of two examples
of its `input_shape` forward and backward; every dataset entry says what it is, and the local
ones how to get their files; `efficientdl list` prints what is registered."""

import pytest
import torch

from conftest import run_cli
from efficientdl.core import registry
from efficientdl.core.recipes import list_recipes
from efficientdl.data import known
from efficientdl.data.classification import LocalDataset

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = registry.entries("model")
SNNS = registry.entries("snn")
DATASETS = registry.entries("dataset")
LOCAL_DATASETS = [e for e in DATASETS if e.build is LocalDataset]
T = 4  # time steps of the spiking networks in the sweep (short, so it runs in seconds)
SNN_CLASSES = 10  # the paper's networks all classify 10 classes


def _name(entry: registry.Entry) -> str:
    return entry.name


def _check_forward_backward(model: torch.nn.Module, x: torch.Tensor, shape: tuple) -> None:
    out = model(x)
    assert tuple(out.shape) == shape
    assert torch.isfinite(out).all()
    out.square().mean().backward()  # not the sum: it is constant across a BatchNorm
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


@pytest.mark.parametrize("entry", MODELS, ids=_name)
def test_model_runs_a_batch_of_its_input_shape(entry):
    torch.manual_seed(0)
    model = entry.create()
    x = torch.randn(2, *entry.input_shape)
    _check_forward_backward(model, x, (2, entry.defaults["num_classes"]))


@pytest.mark.parametrize("entry", SNNS, ids=_name)
def test_spiking_network_runs_a_batch_of_its_input_shape(entry):
    """A static network gets images [N, ...] (repeated over T steps), an event network
    time-first frames [T, N, ...]; both give the output trace [T, N, classes]."""
    torch.manual_seed(0)
    net = entry.create(T=T)
    static = net.T is not None
    x = torch.rand(2, *entry.input_shape) if static else torch.rand(T, 2, *entry.input_shape)
    _check_forward_backward(net, x, (T, 2, SNN_CLASSES))


@pytest.mark.parametrize("entry", DATASETS, ids=_name)
def test_dataset_entry_says_what_it_is(entry):
    assert entry.doc.strip()


@pytest.mark.parametrize("entry", LOCAL_DATASETS, ids=_name)
def test_local_dataset_entry_says_how_to_get_its_files(entry):
    source = entry.create()
    assert source.missing.strip() and entry.input_shape
    assert callable(source.find) and callable(source.load)


def test_get_dataset_serves_the_local_datasets():
    assert known() == [e.name for e in LOCAL_DATASETS]
    assert {"mnist", "fashion-mnist", "digits", "cifar10", "nmnist"} <= set(known())


LISTED = {
    "models": [e.name for e in MODELS + SNNS],
    "datasets": [e.name for e in DATASETS],
    "recipes": list_recipes(),
    "baselines": registry.names("baseline"),
}


@pytest.mark.parametrize("what", sorted(LISTED))
def test_list_prints_every_registered_name(what, tmp_path):
    proc = run_cli("list", what, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert printed == LISTED[what] and printed


def test_the_baseline_entries_are_the_names_the_adashare_config_accepts():
    from efficientdl.adashare.config import ABLATIONS, BASELINES

    assert registry.names("baseline") == sorted((*BASELINES, *ABLATIONS))
