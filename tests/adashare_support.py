"""Shared helpers of the AdaShare tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one intra-op thread (tiny tensors on a shared 2-core machine are far faster so),
    restoring the previous setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
