"""BatchNorm + LIF/DLIF (+ 2x2 average pooling) over all T steps as one autograd Function.

The fast path of the models (``SpikingNetwork`` with every neuron on the ``"fused"``
backend) feeds the output of a convolution or linear layer straight into
:func:`fused_lif`, which computes, per channel ``c`` and time step ``t``::

    I[t]  = alpha[c] * x[t] + beta[c]             BatchNorm as an affine map (or I = x)
    v[t]  = lg[t] * u[t-1] + gin[t] * I[t]        Eq. 1; LIF: lg = lam, gin = 1
    s[t]  = H(v[t] - theta),  u[t] = v[t] (1 - s[t])
    out   = s  or  AvgPool2d(2)(s)

with ``lg[t] = lam * a[t]`` (DLIF, the paper's "leak" form) or ``gin[t] = a[t]`` (the
authors' "input" form).  The BatchNorm output, the membrane potentials and the un-pooled
spikes never exist as tensors: the backward pass recomputes them from ``x`` (the saved
conv/linear output) and runs the surrogate recursion (Eq. 18) and the BatchNorm backward in
the same sweep.  The neuron state is fp32 (fp64 for fp64 inputs) whatever the dtype of
``x``; spikes come out in the dtype of ``x``.

Layout: ``x`` is ``[Tx, M, C]`` with the channel innermost (a channels-last conv output
``[T*B, C, H, W]`` viewed without a copy, or a linear output ``[T, B, F]``).  ``Tx`` is
``T`` or 1: a *static* input (the first layer of a directly encoded image, identical at
every step) is stored once and broadcast over T; its gradient comes back summed over T.

Kernels: the math is written once as plain tensor functions (:func:`lif_forward_math`,
:func:`lif_backward_math`, :func:`channel_stats`).  ``kernels="eager"`` runs them as they
are; ``kernels="compiled"`` runs them through ``torch.compile`` (inductor: one C++/OpenMP
loop nest on CPU, Triton on CUDA), so each sweep reads ``x`` once.  Compilation failures
raise; nothing falls back silently.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("eager", "compiled")


# -- the math, shared by the eager and the compiled kernels ------------------------------

def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _current(x_t: torch.Tensor, alpha, beta, state: torch.dtype) -> torch.Tensor:
    x_t = x_t.to(state)
    return x_t if alpha is None else x_t * alpha + beta


def _pool(s: torch.Tensor, pool: bool) -> torch.Tensor:
    """2x2 average pooling of a channels-last map ``[B, H, W, C]`` (identity unless ``pool``)."""
    if not pool:
        return s
    B, H, W, C = s.shape
    return s.reshape(B, H // 2, 2, W // 2, 2, C).sum((2, 4)) * 0.25


def _unpool(g: torch.Tensor, pool: bool) -> torch.Tensor:
    """Adjoint of :func:`_pool`: ``[B, H/2, W/2, C] -> [B, H, W, C]``."""
    if not pool:
        return g
    B, H2, W2, C = g.shape
    g = (g * 0.25).reshape(B, H2, 1, W2, 1, C)
    return g.expand(B, H2, 2, W2, 2, C).reshape(B, 2 * H2, 2 * W2, C)


def _channel_sum(g: torch.Tensor) -> torch.Tensor:
    return g.sum(tuple(range(g.dim() - 1)))


def lif_forward_math(x, alpha, beta, gin, lg, threshold: float, timesteps: int, static: bool, pool: bool):
    """Spikes ``[T, *, C]`` (pooled when ``pool``) in ``x``'s dtype."""
    state = _state_dtype(x.dtype)
    u = None
    out = []
    for t in range(timesteps):
        current = _current(x[0] if static else x[t], alpha, beta, state)
        v = gin[t] * current if u is None else lg[t] * u + gin[t] * current
        fire = v >= threshold
        u = torch.where(fire, 0.0, v)
        s = fire.to(x.dtype)
        out.append(_pool(s, pool))
    return torch.stack(out)


def lif_backward_math(x, alpha, beta, gin, lg, grad_out, threshold: float, width: float, timesteps: int,
                      static: bool, pool: bool, bn_mode: str, weight, mean, invstd):
    """Gradients ``(grad_x, grad_bn_weight, grad_bn_bias, grad_gin, grad_lg)`` of :func:`lif_forward_math`.

    ``bn_mode``: ``"none"`` (I = x), ``"eval"`` (fixed affine from running statistics) or
    ``"train"`` (batch statistics ``mean``/``invstd`` of ``x``; the gradient flows through
    them as in BatchNorm).  With a static ``x`` the gradient is summed over the T steps
    first; BatchNorm's backward over the T identical copies then reduces to the usual
    formula over the M distinct values.
    """
    state = _state_dtype(x.dtype)
    currents, pots, resets = [], [], []
    u = None
    for t in range(timesteps):
        current = _current(x[0] if static else x[t], alpha, beta, state)
        v = gin[t] * current if u is None else lg[t] * u + gin[t] * current
        resets.append(u)
        u = torch.where(v >= threshold, 0.0, v)
        currents.append(current)
        pots.append(v)
    inv_w2 = 1.0 / (width * width)
    grad_u = None
    grad_current = [None] * timesteps
    grad_gin, grad_lg = [None] * timesteps, [None] * timesteps
    for t in range(timesteps - 1, -1, -1):
        v = pots[t]
        sg = (width - (v - threshold).abs()).clamp_min(0.0) * inv_w2
        gs = _unpool(grad_out[t], pool).to(state)
        if grad_u is None:
            gv = gs * sg
        else:
            # dL/dv[t] = dL/ds[t] s'(v) + dL/du[t] ((1 - s) - v s'(v))
            gv = gs * sg + grad_u * ((v < threshold).to(state) - v * sg)
        grad_current[t] = gv * gin[t]
        grad_gin[t] = (gv * currents[t]).sum()
        grad_lg[t] = (gv * resets[t]).sum() if resets[t] is not None else (gv * 0.0).sum()
        grad_u = gv * lg[t]
    if static:
        g = grad_current[0]
        for t in range(1, timesteps):
            g = g + grad_current[t]
        g = g.unsqueeze(0)
    else:
        g = torch.stack(grad_current)
    grad_gin, grad_lg = torch.stack(grad_gin), torch.stack(grad_lg)
    if bn_mode == "none":
        return g.to(x.dtype), None, None, grad_gin, grad_lg
    xhat = (x.to(state) - mean) * invstd
    db = _channel_sum(g)
    dw = _channel_sum(g * xhat)
    if bn_mode == "eval":
        gx = g * alpha
    else:
        n = g.numel() // g.shape[-1]
        gx = (g - db / n - xhat * (dw / n)) * (weight * invstd)
    return gx.to(x.dtype), dw, db, grad_gin, grad_lg


def channel_stats(x: torch.Tensor):
    """Per-channel (mean, biased variance) of ``x`` ``[..., C]`` in at least fp32."""
    xs = x.to(_state_dtype(x.dtype))
    var, mean = torch.var_mean(xs, dim=tuple(range(xs.dim() - 1)), correction=0)
    return mean, var


_COMPILED: dict[str, object] = {}


def _kernel(name: str, kernels: str):
    fn = {"forward": lif_forward_math, "backward": lif_backward_math, "stats": channel_stats}[name]
    if kernels == "eager":
        return fn
    if kernels != "compiled":
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if name not in _COMPILED:  # a cache of compiled code, not state: results do not depend on it
        _COMPILED[name] = _with_recompile_room(torch.compile(fn, dynamic=True, fullgraph=True))
    return _COMPILED[name]


def _with_recompile_room(compiled):
    """Each layer variant (static input, pooling, BatchNorm mode, dtype, T) is one specialisation;
    allow more of them than dynamo's default of 8 per function."""

    def call(*args):
        with torch._dynamo.config.patch(recompile_limit=64):
            return compiled(*args)

    return call


# -- the autograd Function -----------------------------------------------------------------

class FusedLIF(torch.autograd.Function):
    """Autograd Function of :func:`fused_lif` (see the module docstring for the math).

    forward(x [Tx, M, C], weight [C] | None, bias [C] | None, gin [T], lg [T],
    mean [C] | None, invstd [C] | None, spec) -> spikes [T, *, C] (pooled when spec's pool).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, gin, lg, mean, invstd, spec):
        threshold, width, timesteps, static, pool, bn_mode, kernels = spec
        alpha, beta = _affine(weight, bias, mean, invstd)
        out = _kernel("forward", kernels)(x, alpha, beta, gin, lg, threshold, timesteps, static, pool)
        ctx.spec = spec
        ctx.save_for_backward(x, weight, bias, gin, lg, mean, invstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        threshold, width, timesteps, static, pool, bn_mode, kernels = ctx.spec
        x, weight, bias, gin, lg, mean, invstd = ctx.saved_tensors
        alpha, beta = _affine(weight, bias, mean, invstd)
        gx, dw, db, dgin, dlg = _kernel("backward", kernels)(
            x, alpha, beta, gin, lg, grad_out.contiguous(), threshold, width, timesteps, static, pool,
            bn_mode, weight, mean, invstd,
        )
        if weight is not None:
            dw, db = dw.to(weight.dtype), db.to(bias.dtype)
        return gx, dw, db, dgin.to(gin.dtype), dlg.to(lg.dtype), None, None, None


def _affine(weight, bias, mean, invstd):
    """BatchNorm as ``x * alpha + beta`` (how ATen's BatchNorm applies it), or (None, None)."""
    if weight is None:
        return None, None
    alpha = invstd * weight
    return alpha, bias - mean * alpha


def _gains(neuron, timesteps: int, state: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(gin [T], lg [T]) of Eq. 1 for a LIF/DLIF module; differentiable in the DLIF gain."""
    gain = neuron.gains()
    lam = torch.full((timesteps,), float(neuron.leak), dtype=state, device=device)
    ones = torch.ones(timesteps, dtype=state, device=device)
    if gain is None:
        return ones, lam
    gain = gain.to(state)
    if neuron.gain_form == "input":
        return gain, lam
    return ones, float(neuron.leak) * gain


def _update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """BatchNorm's running-statistics update for a batch of ``count`` values per channel."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)


def fused_lif(
    x: torch.Tensor,
    neuron,
    timesteps: int,
    bn: nn.modules.batchnorm._BatchNorm | None = None,
    pool: bool = False,
    kernels: str = "eager",
) -> torch.Tensor:
    """BatchNorm (optional) -> ``neuron`` over T steps -> 2x2 average pooling (when ``pool``).

    ``x``: channels-last ``[Tx, *, C]`` with ``Tx`` in {T, 1} (1: a static input broadcast
    over the T steps); with ``pool`` it must be ``[Tx, B, H, W, C]``.  Returns the spikes
    ``[T, *, C]`` in ``x``'s dtype, pooled to ``[T, B, H/2, W/2, C]`` when ``pool``.  BatchNorm follows ``bn.training``: batch statistics
    (over all T copies of a static input; the running variance's Bessel correction counts
    them) with the running-statistics update, or the running statistics.
    """
    if x.dim() < 3 or x.shape[0] not in (1, timesteps):
        raise ValueError(f"fused_lif expects x of shape [T={timesteps} or 1, *, C], got {tuple(x.shape)}")
    if pool and (x.dim() != 5 or x.shape[2] % 2 or x.shape[3] % 2):
        raise ValueError(f"fused pooling expects x of shape [T, B, H, W, C] with even H, W, got {tuple(x.shape)}")
    static = x.shape[0] == 1 and timesteps > 1
    state = _state_dtype(x.dtype)
    gin, lg = _gains(neuron, timesteps, state, x.device)
    weight = bias = mean = invstd = None
    bn_mode = "none"
    if bn is not None:
        C = x.shape[-1]
        weight = bn.weight if bn.weight is not None else torch.ones(C, dtype=state, device=x.device)
        bias = bn.bias if bn.bias is not None else torch.zeros(C, dtype=state, device=x.device)
        weight, bias = weight.to(state), bias.to(state)
        if bn.training or not bn.track_running_stats:
            with torch.no_grad():
                mean, var = _kernel("stats", kernels)(x)
                invstd = torch.rsqrt(var + bn.eps)
            if bn.training and bn.track_running_stats:
                _update_running_stats(bn, mean, var, (x.numel() // C) * (timesteps // x.shape[0]))
            bn_mode = "train"
        else:
            mean = bn.running_mean.to(state)
            invstd = torch.rsqrt(bn.running_var.to(state) + bn.eps)
            bn_mode = "eval"
    spec = (float(neuron.threshold), float(neuron.surrogate_width), int(timesteps), static, bool(pool), bn_mode, kernels)
    return FusedLIF.apply(x, weight, bias, gin, lg, mean, invstd, spec)
