"""The benchmark's activation-memory measure against a closed form."""

import torch

from efficientdl.core.benchmark import saved_mib


def test_saved_mib_counts_each_saved_storage_once():
    x = torch.randn(256, 256, requires_grad=True)
    w = torch.randn(256, 256, requires_grad=True)
    # a matmul saves both operands: 2 × 256·256·4 bytes = 0.5 MiB
    assert saved_mib(lambda: (x @ w).sum()) == 0.5
    # the same storage saved twice (x·x) counts once; a view of x shares its storage
    assert saved_mib(lambda: (x * x).sum()) == 0.25
    assert saved_mib(lambda: (x[:128] * w[:128]).sum()) == 0.5
