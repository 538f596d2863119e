"""Pieces of the fused backends (``"eager"``, ``"compiled"``) of the models.

* :func:`conv2d`: a convolution whose low-precision weight gradient runs on one CPU thread
  during training.  oneDNN's bf16 weight-gradient kernel with two OpenMP threads is
  erratic on this project's shared 2-core CPU: 0.1 to 4.8 s for 128 -> 128 channels at
  16x16, batch 256, against a steady 25-55 ms on one thread (AMX); forward, input gradient
  and every matmul are fine with two threads (measured side by side).  fp32 and CUDA are
  left as they are.
* :class:`FastConv2d`: the ``nn.Conv2d`` of every model, always called as a module (so its
  hooks fire on every backend), through :func:`conv2d` on the fused backends.
* channels-last helpers: convolutions run in ``torch.channels_last``; the fused
  BatchNorm-LIF kernels (:mod:`stable_snn.neurons.fused`) see the same memory as
  ``[T, B, H, W, C]`` without a copy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backend import HasBackend

WGRAD_THREADS = 1  # threads of the CPU low-precision weight-gradient call


def _weight_grad(grad_y, x, w, args):
    """dL/dw of one convolution call (aten's kernel), on WGRAD_THREADS threads for CPU bf16/fp16."""
    def call():
        return torch.ops.aten.convolution_backward(grad_y, x, w, *args, [False, True, False])[1]

    if x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float16):
        return call()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(WGRAD_THREADS, threads))
    try:
        return call()
    finally:
        torch.set_num_threads(threads)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class _ConvFastWeightGrad(torch.autograd.Function):
    """y = conv2d(x, w) whose weight gradient comes from :func:`_weight_grad`, in the weight's dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, dtype):
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        y = F.conv2d(x, w, b, stride, padding, dilation, groups)
        ctx.conf = (stride, padding, dilation, groups, bias is not None, weight.dtype)
        ctx.save_for_backward(x, w)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias, weight_dtype = ctx.conf
        acc = torch.promote_types(weight_dtype, torch.float32)  # bias gradient accumulation
        grad_y = grad_y.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) else grad_y.contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        args = (None, list(stride), list(padding), list(dilation), False, [0, 0], groups)
        gx = gw = gb = None
        if need_x:
            gx = torch.ops.aten.convolution_backward(grad_y, x, w, *args, [True, False, False])[0]
        if need_w:
            gw = _weight_grad(grad_y, x, w, args).to(weight_dtype)
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad_y.to(acc).sum((0, 2, 3)).to(weight_dtype)
        return gx, gw, gb, None, None, None, None, None


def conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)``'s math for ``x`` ``[N, C, H, W]``; in training with gradients, through :func:`_weight_grad`.

    Under autocast the operands are cast to the autocast dtype as autocast would; the
    weight gradient comes back in the weight's dtype.
    """
    plain = conv.padding_mode != "zeros" or isinstance(conv.padding, str)
    if plain or not (conv.training and torch.is_grad_enabled() and conv.weight.requires_grad):
        return nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias)
    dtype = _autocast_dtype(x.device) or conv.weight.dtype
    x = x.to(dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _ConvFastWeightGrad.apply(
            x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups, dtype)


class FastConv2d(HasBackend, nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters, same function) that is always called as a module.

    On the ``"eager"`` and ``"compiled"`` backends its training weight gradient goes through
    :func:`conv2d`; on ``"reference"`` it is the plain ``nn.Conv2d``.  Input ``[N, C, H, W]``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "reference":
            return super().forward(x)
        return conv2d(x, self)


def channels_last_5d(y: torch.Tensor) -> torch.Tensor:
    """A ``[tx, B, C, H, W]`` map as ``[tx, B, H, W, C]`` over channels-last memory (a view when it already is)."""
    tx, B = y.shape[:2]
    y = y.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    return y.permute(0, 2, 3, 1).unflatten(0, (tx, B))


def from_channels_last_5d(s: torch.Tensor) -> torch.Tensor:
    """``[T, B, H, W, C]`` -> the same memory as a ``[T, B, C, H, W]`` view."""
    return s.permute(0, 1, 4, 2, 3)
