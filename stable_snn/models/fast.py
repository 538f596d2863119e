"""Pieces of the models' fast path (see :meth:`SpikingNetwork.forward`).

* :func:`conv2d`: a convolution whose weight gradient is computed in batch chunks during
  training.  oneDNN's bf16 weight-gradient kernel on CPU slows down by two orders of
  magnitude once ``batch * H * W`` of one call passes about 64k (measured on this
  project's CPU: 3 s instead of 40 ms for 128 -> 128 channels at 16x16, batch 256); chunks
  of at most 32k output pixels keep it on its fast path.  Forward and input gradient are
  one call each, as usual.
* channels-last helpers: convolutions run in ``torch.channels_last``; the fused
  BatchNorm-LIF kernels (:mod:`stable_snn.neurons.fused`) see the same memory as
  ``[T, B, H, W, C]`` without a copy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WGRAD_CHUNK_PIXELS = 32768


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class _ConvChunkedWeightGrad(torch.autograd.Function):
    """y = conv2d(x, w) with the weight gradient summed over batch chunks (fp32 accumulation)."""

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
        acc = torch.promote_types(weight_dtype, torch.float32)
        grad_y = grad_y.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) else grad_y.contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        args = (None, list(stride), list(padding), list(dilation), False, [0, 0], groups)
        gx = gw = gb = None
        if need_x:
            gx = torch.ops.aten.convolution_backward(grad_y, x, w, *args, [True, False, False])[0]
        if need_w:
            rows = max(1, WGRAD_CHUNK_PIXELS // max(1, grad_y.shape[2] * grad_y.shape[3]))
            for i in range(0, x.shape[0], rows):
                part = torch.ops.aten.convolution_backward(
                    grad_y[i:i + rows], x[i:i + rows], w, *args, [False, True, False])[1].to(acc)
                gw = part if gw is None else gw.add_(part)
            gw = gw.to(weight_dtype)
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad_y.to(acc).sum((0, 2, 3)).to(weight_dtype)
        return gx, gw, gb, None, None, None, None, None


def conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for ``x`` ``[N, C, H, W]``; in training with gradients, through the chunked weight gradient.

    Under autocast the operands are cast to the autocast dtype as autocast would; the
    weight gradient comes back in the weight's dtype.
    """
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return conv(x)
    if not (conv.training and torch.is_grad_enabled() and conv.weight.requires_grad):
        return conv(x)
    dtype = _autocast_dtype(x.device) or conv.weight.dtype
    x = x.to(dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _ConvChunkedWeightGrad.apply(
            x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups, dtype)


def channels_last_5d(y: torch.Tensor, tx: int) -> torch.Tensor:
    """A channels-last ``[tx*B, C, H, W]`` map as ``[tx, B, H, W, C]`` (a view)."""
    y = y.contiguous(memory_format=torch.channels_last)
    return y.permute(0, 2, 3, 1).unflatten(0, (tx, y.shape[0] // tx))


def from_channels_last_5d(s: torch.Tensor) -> torch.Tensor:
    """``[T, B, H, W, C]`` -> the same memory as a channels-last ``[T*B, C, H, W]``."""
    return s.flatten(0, 1).permute(0, 3, 1, 2)
