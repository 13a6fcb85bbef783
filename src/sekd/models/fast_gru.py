"""A faster GRU for CPU training, with the same parameters and equations as ``torch.nn.GRU``.

Why: on CPU, ``nn.GRU``'s training path runs every time step as a handful of small autograd ops,
and its backward replays each of them through the autograd engine: for the 2x32 student most of
a training step is that per-op overhead (profile: ~10 k ``aten::mul`` and ~8 k ``aten::copy_``
calls per step), not arithmetic. Here one ``autograd.Function`` per layer runs the forward
recurrence with six fused ops per step and no graph, saves the gates, and runs a hand-derived
backward recurrence with four ops per step; everything that does not depend on the recurrence
(input projections, weight and bias gradients, input gradients) is one batched matrix product
over all steps. Same maths as PyTorch's GRU (``r``, ``z``, ``n`` gate order, ``b_hn`` inside the
reset product), so results agree with ``nn.GRU`` to float32 rounding.

Used only where it pays: unidirectional layers of at most ``MAX_HIDDEN`` units, on CPU, when
gradients are needed. Inference, bidirectional layers, GPUs (cuDNN) and wider layers keep
``nn.GRU``: from ~128 units on the per-step matrix products dominate and torch's kernel is as
fast (measured: 1.4x at 32 units, 1.2x at 64, none at 128 and 256), so the teacher trains as
before, bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call


class _GRULayer(torch.autograd.Function):
    """One unidirectional GRU layer over ``x`` [T, B, I] from a zero state: outputs [T, B, H]."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):  # noqa: ANN001, ANN205 - autograd signature
        steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        gi = torch.addmm(b_ih, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, -1)
        w_hh_t = w_hh.t()
        outputs = x.new_empty(steps + 1, batch, hidden)  # row 0: the zero initial state
        outputs[0].zero_()
        rz = x.new_empty(steps, batch, 2 * hidden)
        new = x.new_empty(steps, batch, hidden)
        gh = x.new_empty(steps, batch, 3 * hidden)
        # Every per-step view is made once, by unbind, outside the loop: indexing a step costs
        # about as much as the arithmetic on a 16 x 32 tile, so the loop only runs kernels.
        hs = outputs.unbind(0)
        gh_t = gh.unbind(0)
        gh_rz, gh_n = gh[..., : 2 * hidden].unbind(0), gh[..., 2 * hidden :].unbind(0)
        gi_rz, gi_n = gi[..., : 2 * hidden].unbind(0), gi[..., 2 * hidden :].unbind(0)
        rz_t, reset, update = rz.unbind(0), rz[..., :hidden].unbind(0), rz[..., hidden:].unbind(0)
        new_t = new.unbind(0)
        b_hh_rows = b_hh.expand(batch, -1)  # addmm into out= is ~2x slower with a 1-D bias
        for t in range(steps):
            torch.addmm(b_hh_rows, hs[t], w_hh_t, out=gh_t[t])
            torch.add(gi_rz[t], gh_rz[t], out=rz_t[t]).sigmoid_()
            torch.addcmul(gi_n[t], reset[t], gh_n[t], out=new_t[t])
            new_t[t].tanh_()
            torch.lerp(new_t[t], hs[t], update[t], out=hs[t + 1])
        ctx.save_for_backward(x, w_ih, w_hh, outputs, rz, new, gh[..., 2 * hidden :])
        return outputs[1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205 - autograd signature
        x, w_ih, w_hh, outputs, rz, new, gh_new = ctx.saved_tensors
        steps, batch, hidden = new.shape
        reset, update, previous = rz[..., :hidden], rz[..., hidden:], outputs[:-1]
        # d(pre-activation)/dh per gate, for everything but the recurrence (batched over steps)
        d_new = (1 - update) * (1 - new * new)
        d_gates_i = torch.cat(
            (d_new * gh_new * reset * (1 - reset), (previous - new) * update * (1 - update), d_new),
            dim=-1,
        ).view(steps, batch, 3, hidden)
        d_gates_h = d_gates_i.clone()
        d_gates_h[:, :, 2] *= reset
        grad_h = torch.empty_like(new)  # dL/dh_t, the total through outputs and the recurrence
        grad_out = grad_out.contiguous()
        # per-step views made once (see forward); the products go into reused buffers
        grad_h_t, grad_h_rows = grad_h.unbind(0), grad_h.unsqueeze(2).unbind(0)
        grad_out_t, d_gates_t, update_t = grad_out.unbind(0), d_gates_h.unbind(0), update.unbind(0)
        d_gh_step = new.new_empty(batch, 3, hidden)
        d_gh_flat = d_gh_step.view(batch, 3 * hidden)
        carry = torch.zeros_like(new[0])  # dL/dh_t through h_{t+1}; none after the last step
        for t in range(steps - 1, -1, -1):
            torch.add(grad_out_t[t], carry, out=grad_h_t[t])
            torch.mul(d_gates_t[t], grad_h_rows[t], out=d_gh_step)
            torch.mul(grad_h_t[t], update_t[t], out=carry).addmm_(d_gh_flat, w_hh)
        d_gi = (d_gates_i * grad_h.unsqueeze(2)).view(steps * batch, 3 * hidden)
        d_gh = (d_gates_h * grad_h.unsqueeze(2)).view(steps * batch, 3 * hidden)
        flat_x = x.reshape(steps * batch, -1)
        grad_x = (d_gi @ w_ih).view_as(x) if ctx.needs_input_grad[0] else None
        grad_w_ih = d_gi.t() @ flat_x
        grad_w_hh = d_gh.t() @ previous.reshape(steps * batch, hidden)
        return grad_x, grad_w_ih, grad_w_hh, d_gi.sum(0), d_gh.sum(0)


MAX_HIDDEN = 64  # wider layers gain nothing from fusing (see the module docstring)
_reference_only = False


@contextmanager
def reference_kernel() -> Iterator[None]:
    """Within: every GRU runs through ``nn.GRU``'s own kernel (for comparing the two)."""
    global _reference_only
    saved, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = saved


def fast_path_applies(gru: nn.GRU, x: torch.Tensor) -> bool:
    """Whether ``run_gru_layers`` takes the fused path: CPU training of a unidirectional GRU."""
    return (
        not _reference_only
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and not gru.bidirectional
        and gru.hidden_size <= MAX_HIDDEN
        and gru.bias
        and (gru.dropout == 0 or not gru.training)
        and not torch.is_autocast_enabled("cpu")
    )


def run_gru_layers(
    gru: nn.GRU, x: torch.Tensor, first: int = 0, last: int | None = None
) -> torch.Tensor:
    """Layers ``first+1..last`` of ``gru`` (batch first, zero initial state) on ``x`` [B, T, I].

    The whole stack through ``gru`` itself off the fast path; a part of it (``first``/``last``,
    for split feature KD) through the same parameters either way, so every split is exact.
    """
    last = gru.num_layers if last is None else last
    if first == last:
        return x
    if fast_path_applies(gru, x):
        out = x.transpose(0, 1)
        for layer in range(first, last):
            weights = [getattr(gru, f"{kind}_l{layer}") for kind in _KINDS]
            out = _GRULayer.apply(out, *weights)
        return out.transpose(0, 1)
    if first == 0 and last == gru.num_layers:
        return gru(x)[0]
    return _partial_stack(gru, x, first, last)


_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _partial_stack(gru: nn.GRU, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """Layers ``first+1..last`` through torch's GRU kernel: a parameter-free (meta) GRU of that
    many layers called with ``gru``'s parameters of those layers."""
    part = nn.GRU(
        x.shape[-1],
        gru.hidden_size,
        num_layers=last - first,
        batch_first=True,
        bidirectional=gru.bidirectional,
        device="meta",
    )
    params = {
        name: getattr(gru, re.sub(r"_l(\d+)", lambda m: f"_l{int(m[1]) + first}", name))
        for name in part._flat_weights_names
    }
    return functional_call(part, params, (x,))[0]
