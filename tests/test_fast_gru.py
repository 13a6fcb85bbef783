"""The fused CPU training GRU computes what ``nn.GRU`` computes: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sekd.models import build_model
from sekd.models.fast_gru import (
    MAX_HIDDEN,
    _GRULayer,
    fast_path_applies,
    reference_kernel,
    run_gru_layers,
)


def _grads(out: torch.Tensor, x: torch.Tensor, gru: nn.GRU, seed: int) -> list[torch.Tensor]:
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, [x, *gru.parameters()], upstream.to(out.dtype))


@pytest.mark.parametrize("layers", [1, 3])
def test_matches_nn_gru_in_double(layers: int) -> None:
    torch.manual_seed(0)
    gru = nn.GRU(7, 5, num_layers=layers, batch_first=True).double()
    for param in gru.parameters():  # non-zero biases: b_hn sits inside the reset product
        nn.init.normal_(param)
    x = torch.randn(3, 13, 7, dtype=torch.double, requires_grad=True)
    assert fast_path_applies(gru, x)
    reference, fast = gru(x)[0], run_gru_layers(gru, x)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)
    for got, want in zip(_grads(fast, x, gru, 1), _grads(reference, x, gru, 1), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.double).requires_grad_()

    inputs = (tensor(6, 2, 3), tensor(12, 3), tensor(12, 4), tensor(12), tensor(12))
    assert torch.autograd.gradcheck(_GRULayer.apply, inputs)


def test_partial_stack_is_the_same_layers() -> None:
    """A split (layers 2..3 of 3) through the fast path equals torch's kernel on those layers."""
    torch.manual_seed(1)
    gru = nn.GRU(4, 6, num_layers=3, batch_first=True)
    x = torch.randn(2, 9, 6, requires_grad=True)
    fast = run_gru_layers(gru, x, 1, 3)
    with torch.no_grad():  # off the fast path: the meta-GRU functional call
        assert not fast_path_applies(gru, x)
        reference = run_gru_layers(gru, x, 1, 3)
    torch.testing.assert_close(fast.detach(), reference, rtol=1e-5, atol=1e-6)
    assert run_gru_layers(gru, x, 2, 2) is x


def test_fast_path_only_where_it_applies() -> None:
    x = torch.randn(1, 3, 4)
    assert not fast_path_applies(nn.GRU(4, 2, batch_first=True, bidirectional=True), x)
    assert not fast_path_applies(nn.GRU(4, 2, batch_first=True, bias=False), x)
    assert fast_path_applies(nn.GRU(4, MAX_HIDDEN, batch_first=True), x)
    assert not fast_path_applies(nn.GRU(4, MAX_HIDDEN + 1, batch_first=True), x)  # the teacher's
    dropout = nn.GRU(4, 2, num_layers=2, batch_first=True, dropout=0.5)
    assert not fast_path_applies(dropout.train(), x)
    assert fast_path_applies(dropout.eval(), x)
    with reference_kernel():
        assert not fast_path_applies(dropout, x)
    assert fast_path_applies(dropout, x)


@pytest.mark.parametrize("name", ["gru_mask", "gru_mask_complex"])
def test_model_training_step_matches_nn_gru(name: str) -> None:
    """A whole model's loss gradient is the same with and without the fused layer (float32)."""
    conf = {"hidden": 8, "layers": 2, "n_fft": 64, "hop": 16}
    wave = torch.randn(2, 800, generator=torch.Generator().manual_seed(3))

    def gradients() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(name, conf)
        model(wave).square().mean().backward()
        return [p.grad for p in model.parameters()]

    fast = gradients()
    with reference_kernel():
        reference = gradients()
    for got, want in zip(fast, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
