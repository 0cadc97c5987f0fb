"""Registry sweep and training behaviour of the paper networks."""

import pytest
import torch

from efficientdl.core.registry import get
from efficientdl.snn.config import recipe
from efficientdl.snn.networks import build, list_models
from efficientdl.snn.train import make_optimizer, train_step

PARAMS = {
    "mnist_cnn": 210_375,
    "fmnist_mlp": 477_600,
    "fmnist_cnn": 3_273_504,
    "nmnist_cnn": 42_840,
    "cifar10_cnn1": 21_156_384,
    "cifar10_cnn2": 44_999_040,
}


def _input(name, n=2, T=8):
    """Inputs strong enough that every layer fires at initialisation (so every weight can learn)."""
    shape = get("snn", name).input_shape
    if name == "nmnist_cnn":
        return (torch.rand(T, n, *shape) < 0.5).float()
    return torch.randn(n, *shape) * 4


def test_registry_holds_the_paper_networks():
    assert set(list_models()) == set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_every_registered_model(name):
    torch.manual_seed(0)
    net = build(name, T=8)
    assert sum(p.numel() for p in net.parameters()) == PARAMS[name]
    out = net(_input(name))
    assert out.shape == (8, 2, 10)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} got no gradient"


def test_unknown_override_and_model():
    with pytest.raises(ValueError, match="unknown override 'tau'"):
        build("mnist_cnn", tau=3)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build("resnet")
    with pytest.raises(ValueError, match="unknown recipe field 'lrate'"):
        recipe("mnist_cnn", lrate=1.0)


def test_twenty_steps_on_one_batch_lower_the_loss():
    torch.manual_seed(0)
    r = recipe("mnist_cnn")
    net = build("mnist_cnn")
    opt = make_optimizer(net, r)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    losses = [train_step(net, opt, x, y, r)["loss"].item() for _ in range(20)]
    assert losses[-1] < 0.9 * losses[0]
    assert all(p.abs().max() <= 4.0 for p in net.parameters())


def _seeded_run(seed):
    torch.manual_seed(seed)
    r = recipe("cifar10_cnn1")  # has dropout: exercises the RNG
    net = build("cifar10_cnn1", T=2)
    opt = make_optimizer(net, r)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    for _ in range(2):
        train_step(net, opt, x, y, r)
    return [p.detach().clone() for p in net.parameters()]


def test_seeded_runs_are_bit_identical():
    a, b = _seeded_run(3), _seeded_run(3)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    c = _seeded_run(4)
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


@pytest.mark.parametrize("name", ["mnist_cnn", "fmnist_mlp"])
def test_fold_static_input_agrees_with_unfolded(name):
    torch.manual_seed(0)
    folded = build(name)
    plain = build(name, fold_static_input=False)
    plain.load_state_dict(folded.state_dict())
    x = torch.randn(8, 1, 28, 28) * 3
    torch.testing.assert_close(folded(x), plain(x), atol=1e-5, rtol=0)
