"""Model size and compute: parameter count and multiply-accumulates (MACs) per second of audio.

MACs are counted with forward hooks over one second of input (batch 1) on the layers that dominate
the cost: Linear, Conv1d, ConvTranspose1d, GRU and LSTM (gate matrix products only; biases,
activations, norms and element-wise gate arithmetic are left out, as is usual). Modules that do
FFTs add their own estimate through a ``fft_macs(num_samples)`` method: a real FFT of size N is
taken as ``N log2 N`` real MACs (half a radix-2 complex FFT, 4 real MACs per complex multiply),
plus the analysis/synthesis windows and the mask multiply (see ``GRUMaskNet.fft_macs``).
"""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _linear_macs(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> float:
    return output.numel() * module.in_features


def _conv_macs(module: nn.Conv1d, inputs: tuple, output: torch.Tensor) -> float:
    return output.numel() * (module.in_channels // module.groups) * module.kernel_size[0]


def _conv_transpose_macs(module: nn.ConvTranspose1d, inputs: tuple, output: torch.Tensor) -> float:
    x = inputs[0]
    per_input = (module.out_channels // module.groups) * module.kernel_size[0]
    return x.numel() * per_input


def _rnn_macs(module: nn.RNNBase, inputs: tuple, output) -> float:
    """Gate products per step: ``gates * (in * H + H * H)`` per layer and direction."""
    x = inputs[0]
    steps = x.shape[1] if module.batch_first else x.shape[0]
    batch = x.shape[0] if module.batch_first else x.shape[1]
    gates = {"GRU": 3, "LSTM": 4}.get(module.mode, 1)
    directions = 2 if module.bidirectional else 1
    hidden, total = module.hidden_size, 0
    for layer in range(module.num_layers):
        width = module.input_size if layer == 0 else hidden * directions
        total += gates * (width * hidden + hidden * hidden) * directions
    return float(total * steps * batch)


HOOKS = {
    nn.Linear: _linear_macs,
    nn.Conv1d: _conv_macs,
    nn.ConvTranspose1d: _conv_transpose_macs,
    nn.GRU: _rnn_macs,
    nn.LSTM: _rnn_macs,
}


@torch.no_grad()
def macs_per_second(model: nn.Module, sample_rate: int = 16000) -> float:
    """MACs to enhance one second of audio (batch 1), on the model's device and in eval mode."""
    totals: list[float] = []
    handles = []
    for module in model.modules():
        counter = HOOKS.get(type(module))
        if counter is not None:
            handles.append(
                module.register_forward_hook(
                    lambda mod, inp, out, fn=counter: totals.append(fn(mod, inp, out))
                )
            )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, sample_rate, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    extra = sum(m.fft_macs(sample_rate) for m in model.modules() if hasattr(m, "fft_macs"))
    return float(sum(totals) + extra)
