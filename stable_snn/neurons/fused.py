"""BatchNorm + LIF/DLIF (+ 2x2 average pooling) over all T steps as one autograd Function.

The ``"eager"`` and ``"compiled"`` backends of the models (:mod:`stable_snn.models.blocks`)
feed the output of a convolution or linear layer straight into :func:`fused_lif`, which
computes, per channel ``c`` and time step ``t``::

    I[t]  = alpha[c] * x[t] + beta[c]             BatchNorm as an affine map (or I = x)
    v[t]  = lg[t] * u[t-1] + gin[t] * I[t]        Eq. 1; LIF: lg = lam, gin = 1
    s[t]  = H(v[t] - theta),  u[t] = v[t] (1 - s[t])
    out   = s  or  AvgPool2d(2)(s)   (and, on request, the un-pooled s as well)

with ``lg[t] = lam * a[t]`` (DLIF, the paper's "leak" form) or ``gin[t] = a[t]`` (the
authors' "input" form).  The BatchNorm output and the membrane potentials never exist as
tensors (nor do the un-pooled spikes unless asked for): the backward pass recomputes them
from ``x`` (the saved conv/linear output) and runs the surrogate recursion (the triangle of
Eq. 18, the only surrogate these kernels implement) and the BatchNorm backward in the same
sweep.  The neuron state is fp32 (fp64 for fp64 inputs) whatever the dtype of ``x``; spikes
come out in the dtype of ``x``.

Layout: ``x`` is ``[Tx, M, C]`` with the channel innermost (a channels-last conv output
``[T*B, C, H, W]`` viewed without a copy, or a linear output ``[T, B, F]``).  ``Tx`` is
``T`` or 1: a *static* input (the first layer of a directly encoded image, identical at
every step) is stored once and broadcast over T; its gradient comes back summed over T.

Kernels: the math is written once as plain tensor functions (:func:`channel_stats`,
:func:`lif_forward_math`, :func:`lif_backward_scan`, :func:`lif_backward_reduce`).
``kernels="eager"`` runs them as they are; ``kernels="compiled"`` runs them through
``torch.compile`` (inductor: C++/OpenMP loops on CPU, Triton on CUDA).  The forward is one
elementwise sweep with the T steps in registers; the backward is one elementwise sweep (the
recursion) and a few reductions (BatchNorm, DLIF gains), kept in separate functions so the
compiler does not fuse per-step reductions into the recursion.  Gradients that the running
backward does not need (BatchNorm affine and DLIF gains inside an attack's input-gradient
call) are not computed.  Compilation failures raise; nothing falls back silently.
"""
from __future__ import annotations

import torch
from torch import nn

KERNELS = ("eager", "compiled")


# -- the math, shared by the eager and the compiled kernels ------------------------------

def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _current(x_t: torch.Tensor, alpha, beta, state: torch.dtype) -> torch.Tensor:
    x_t = x_t.to(state)
    return x_t if alpha is None else x_t * alpha + beta


def _pool(s: torch.Tensor, pool: bool) -> torch.Tensor:
    """2x2 average pooling of a channels-last map ``[*, H, W, C]`` (identity unless ``pool``)."""
    if not pool:
        return s
    *lead, H, W, C = s.shape
    return s.reshape(*lead, H // 2, 2, W // 2, 2, C).sum((-4, -2)) * 0.25


def _unpool(g: torch.Tensor, pool: bool) -> torch.Tensor:
    """Adjoint of :func:`_pool`: ``[*, H/2, W/2, C] -> [*, H, W, C]``."""
    if not pool:
        return g
    *lead, H2, W2, C = g.shape
    g = (g * 0.25).reshape(*lead, H2, 1, W2, 1, C)
    return g.expand(*lead, H2, 2, W2, 2, C).reshape(*lead, 2 * H2, 2 * W2, C)


def _channel_sum(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum of ``g`` ``[Tx, *, C]`` per channel, shaped like the statistics ``like``: ``[C]``, or per
    group ``[G, 1, ..., 1, C]`` for a grouped ``g`` ``[Tx, G, *, C]``."""
    if like.dim() == 1:
        return g.sum(tuple(range(g.dim() - 1)))
    return g.sum((0, *range(2, g.dim() - 1))).view_as(like)


def lif_forward_math(x, alpha, beta, gin, lg, threshold: float, timesteps: int, static: bool, pool: bool,
                     keep_full: bool):
    """``(spikes, full)``: spikes ``[T, *, C]`` (pooled when ``pool``) in ``x``'s dtype, and the
    un-pooled spikes ``[T, *, C]`` when ``keep_full`` (else None)."""
    state = _state_dtype(x.dtype)
    u = None
    out, full = [], []
    for t in range(timesteps):
        current = _current(x[0] if static else x[t], alpha, beta, state)
        v = gin[t] * current if u is None else lg[t] * u + gin[t] * current
        fire = v >= threshold
        u = torch.where(fire, 0.0, v)
        s = fire.to(x.dtype)
        out.append(_pool(s, pool))
        if keep_full:
            full.append(s)
    return torch.stack(out), (torch.stack(full) if keep_full else None)


def lif_backward_scan(x, alpha, beta, gin, lg, grad_out, grad_full, threshold: float, width: float, timesteps: int,
                      static: bool, pool: bool, need_gin: bool, need_lg: bool):
    """The surrogate backward recursion (Eq. 18 through Eq. 1), elementwise over ``[*, C]``.

    ``grad_out``: dL/d(spikes) (pooled when ``pool``); ``grad_full``: dL/d(un-pooled spikes)
    or None.  Recomputes the currents and potentials from ``x``, runs the recursion backwards
    and returns ``(grad_current, gv_current, gv_reset)``: ``dL/dI`` ``[T, *, C]`` (summed over
    T to ``[1, *, C]`` for a static input) in the state dtype, and the per-step products
    ``dL/dv[t] * I[t]`` and ``dL/dv[t] * u[t-1]`` ``[T, *, C]`` whose sums are the gradients
    of ``gin[t]`` and ``lg[t]`` (None unless asked for).  Purely elementwise, so compiled it
    is one loop over the elements with the T steps in registers.
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
    gv_current, gv_reset = [None] * timesteps, [None] * timesteps
    for t in range(timesteps - 1, -1, -1):
        v = pots[t]
        sg = (width - (v - threshold).abs()).clamp_min(0.0) * inv_w2
        gs = _unpool(grad_out[t], pool).to(state)
        if grad_full is not None:
            gs = gs + grad_full[t].to(state)
        if grad_u is None:
            gv = gs * sg
        else:
            # dL/dv[t] = dL/ds[t] s'(v) + dL/du[t] ((1 - s) - v s'(v))
            gv = gs * sg + grad_u * ((v < threshold).to(state) - v * sg)
        grad_current[t] = gv * gin[t]
        if need_gin:
            gv_current[t] = gv * currents[t]
        if need_lg:
            gv_reset[t] = gv * resets[t] if resets[t] is not None else gv * 0.0
        grad_u = gv * lg[t]
    if static:
        g = grad_current[0]
        for t in range(1, timesteps):
            g = g + grad_current[t]
        g = g.unsqueeze(0)
    else:
        g = torch.stack(grad_current)
    return g, torch.stack(gv_current) if need_gin else None, torch.stack(gv_reset) if need_lg else None


def lif_backward_reduce(x, g, gv_current, gv_reset, alpha, weight, mean, invstd, bn_mode: str, need_bn: bool):
    """From :func:`lif_backward_scan`'s outputs: ``(grad_x, grad_bn_weight, grad_bn_bias, grad_gin, grad_lg)``.

    ``bn_mode``: ``"none"`` (I = x), ``"eval"`` (fixed affine from running statistics) or
    ``"train"`` (batch statistics ``mean``/``invstd`` of ``x``; the gradient flows through
    them as in BatchNorm).  With a static ``x``, ``g`` is already summed over the T steps and
    BatchNorm's backward over the T identical copies reduces to the usual formula over the
    distinct values.  Grouped batch statistics (``mean`` ``[G, 1, ..., 1, C]``, ``x``
    ``[Tx, G, *, C]``) are the same formula per group; the affine gradients are summed over groups.
    """
    grad_gin = gv_current.sum(tuple(range(1, gv_current.dim()))) if gv_current is not None else None
    grad_lg = gv_reset.sum(tuple(range(1, gv_reset.dim()))) if gv_reset is not None else None
    if bn_mode == "none":
        return g.to(x.dtype), None, None, grad_gin, grad_lg
    dw = db = None
    if need_bn or bn_mode == "train":  # train mode: the input gradient needs them too
        xhat = (x.to(g.dtype) - mean) * invstd
        db = _channel_sum(g, mean)
        dw = _channel_sum(g * xhat, mean)
    if bn_mode == "eval":
        return (g * alpha).to(x.dtype), dw, db, grad_gin, grad_lg
    groups = mean.shape[0] if mean.dim() > 1 else 1
    n = g.numel() // (g.shape[-1] * groups)
    gx = (g - db / n - xhat * (dw / n)) * (weight * invstd)
    if groups > 1:
        dw, db = dw.reshape(groups, -1).sum(0), db.reshape(groups, -1).sum(0)
    return gx.to(x.dtype), dw, db, grad_gin, grad_lg


def channel_stats(x: torch.Tensor):
    """Per-channel (mean, biased variance) of ``x`` ``[..., C]`` in at least fp32."""
    xs = x.to(_state_dtype(x.dtype))
    var, mean = torch.var_mean(xs, dim=tuple(range(xs.dim() - 1)), correction=0)
    return mean, var


_COMPILED: dict[str, object] = {}


def _kernel(name: str, kernels: str):
    fn = {"forward": lif_forward_math, "scan": lif_backward_scan, "reduce": lif_backward_reduce,
          "stats": channel_stats}[name]
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
    mean [C] | None, invstd [C] | None, spec) -> spikes [T, *, C] (pooled when spec's pool),
    or ``(spikes, un-pooled spikes)`` when spec's keep_full.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, gin, lg, mean, invstd, spec):
        threshold, width, timesteps, static, pool, keep_full, bn_mode, kernels = spec
        alpha, beta = _affine(weight, bias, mean, invstd)
        out, full = _kernel("forward", kernels)(x, alpha, beta, gin, lg, threshold, timesteps, static, pool, keep_full)
        ctx.spec = spec
        ctx.out_shape = out.shape
        ctx.grad_nodes = [t.grad_fn if isinstance(t, torch.Tensor) else None for t in (x, weight, bias, gin, lg)]
        ctx.save_for_backward(x, weight, bias, gin, lg, mean, invstd)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        return (out, full) if keep_full else out

    @staticmethod
    def backward(ctx, grad_out, grad_full=None):
        threshold, width, timesteps, static, pool, keep_full, bn_mode, kernels = ctx.spec
        x, weight, bias, gin, lg, mean, invstd = ctx.saved_tensors
        if grad_out is None and grad_full is None:
            return (None,) * 8
        if grad_out is None:
            grad_out = grad_full.new_zeros(ctx.out_shape)
        alpha, beta = _affine(weight, bias, mean, invstd)
        need = [_needed(ctx, i) for i in range(5)]
        need_bn = weight is not None and (need[1] or need[2])
        g, gv_current, gv_reset = _kernel("scan", kernels)(
            x, alpha, beta, gin, lg, grad_out.contiguous(), grad_full.contiguous() if grad_full is not None else None,
            threshold, width, timesteps, static, pool, need[3], need[4])
        gx, dw, db, dgin, dlg = _kernel("reduce", kernels)(
            x, g, gv_current, gv_reset, alpha, weight, mean, invstd, bn_mode, need_bn)
        cast = lambda grad, like: grad.to(like.dtype) if grad is not None else None  # noqa: E731
        return (gx if need[0] else None, cast(dw, weight), cast(db, bias), cast(dgin, gin), cast(dlg, lg),
                None, None, None)


def _needed(ctx, index: int) -> bool:
    """Whether this backward pass needs the gradient of input ``index``.

    ``needs_input_grad`` says whether the input requires grad at all; inside an
    ``autograd.grad`` call that asks for other tensors only (an attack's input gradient),
    the engine may not run the input's gradient node, and that gradient is skipped.
    """
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.grad_nodes[index]
    if node is None:
        return True
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # no such query in this build or outside a backward
        return True


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
    gain = gain.to(state).view_as(gain)  # a gradient node of its own (see _needed)
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


def triangle_width(surrogate) -> float:
    """The width of a triangle surrogate (Eq. 18), the only surrogate the fused kernels implement."""
    if not getattr(surrogate, "fused", False):
        raise ValueError(
            f"the fused kernels of backends 'eager' and 'compiled' implement the triangle surrogate (Eq. 18) "
            f"only, got {surrogate!r}: use backend='reference' for other surrogates"
        )
    return float(surrogate.width)


def _batch_norm_operands(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, timesteps: int, groups: int,
                         kernels: str):
    """``(weight, bias, mean, invstd, bn_mode)`` of :class:`FusedLIF` for ``bn`` on ``x`` ``[Tx, *, C]``
    (grouped ``[Tx, G, *, C]`` when ``groups > 1``: batch statistics ``[G, 1, ..., 1, C]`` per group, and
    the running statistics updated by each group in turn, as ``groups`` separate calls would)."""
    state = _state_dtype(x.dtype)
    C = x.shape[-1]
    weight = bn.weight if bn.weight is not None else torch.ones(C, dtype=state, device=x.device)
    bias = bn.bias if bn.bias is not None else torch.zeros(C, dtype=state, device=x.device)
    # views give weight/bias a gradient node of their own, which the backward can query
    weight, bias = weight.to(state).view_as(weight), bias.to(state).view_as(bias)
    if not (bn.training or not bn.track_running_stats):
        return weight, bias, bn.running_mean.to(state), torch.rsqrt(bn.running_var.to(state) + bn.eps), "eval"
    parts = [x[:, g] for g in range(groups)] if groups > 1 else [x]
    stats = []
    with torch.no_grad():
        for part in parts:
            mean, var = _kernel("stats", kernels)(part)
            if bn.training and bn.track_running_stats:
                _update_running_stats(bn, mean, var, (part.numel() // C) * (timesteps // x.shape[0]))
            stats.append((mean, torch.rsqrt(var + bn.eps)))
        if groups == 1:
            return weight, bias, *stats[0], "train"
        shape = (groups, *[1] * (x.dim() - 3), C)
        mean, invstd = (torch.stack([s[i] for s in stats]).view(shape) for i in (0, 1))
    return weight, bias, mean, invstd, "train"


def fused_lif(
    x: torch.Tensor,
    neuron,
    timesteps: int,
    bn: nn.modules.batchnorm._BatchNorm | None = None,
    pool: bool = False,
    kernels: str = "eager",
    keep_full: bool = False,
    groups: int = 1,
):
    """BatchNorm (optional) -> ``neuron`` over T steps -> 2x2 average pooling (when ``pool``).

    ``x``: channels-last ``[Tx, *, C]`` with ``Tx`` in {T, 1} (1: a static input broadcast
    over the T steps); with ``pool`` it must be ``[Tx, B, H, W, C]``.  Returns the spikes
    ``[T, *, C]`` in ``x``'s dtype, pooled to ``[T, B, H/2, W/2, C]`` when ``pool``; with
    ``pool`` and ``keep_full``, the pair ``(pooled, un-pooled spikes [T, B, H, W, C])``, both
    differentiable.  BatchNorm follows ``bn.training``: batch statistics (over all T copies of
    a static input; the running variance's Bessel correction counts them) with the
    running-statistics update, or the running statistics.  ``groups > 1``: the batch (dim 1) is
    that many equal parts with batch statistics of their own (a clean and a perturbed batch in one
    call compute what two calls would).  ``neuron``'s surrogate must be a triangle (Eq. 18); any
    other raises ``ValueError`` naming the ``"reference"`` backend.
    """
    if x.dim() < 3 or x.shape[0] not in (1, timesteps):
        raise ValueError(f"fused_lif expects x of shape [T={timesteps} or 1, *, C], got {tuple(x.shape)}")
    if pool and (x.dim() != 5 or x.shape[2] % 2 or x.shape[3] % 2):
        raise ValueError(f"fused pooling expects x of shape [T, B, H, W, C] with even H, W, got {tuple(x.shape)}")
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if groups < 1 or x.shape[1] % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the batch of x {tuple(x.shape)}")
    width = triangle_width(neuron.surrogate)
    static = x.shape[0] == 1 and timesteps > 1
    gin, lg = _gains(neuron, timesteps, _state_dtype(x.dtype), x.device)
    weight = bias = mean = invstd = None
    bn_mode = "none"
    grouped = groups > 1 and bn is not None and (bn.training or not bn.track_running_stats)
    if grouped:
        x = x.unflatten(1, (groups, -1))  # [Tx, G, B/G, *, C]
    if bn is not None:
        weight, bias, mean, invstd, bn_mode = _batch_norm_operands(bn, x, timesteps, groups if grouped else 1, kernels)
    spec = (float(neuron.threshold), width, int(timesteps), static, bool(pool), bool(pool and keep_full), bn_mode, kernels)
    out = FusedLIF.apply(x, weight, bias, gin, lg, mean, invstd, spec)
    if not grouped:
        return out
    return tuple(o.flatten(1, 2) for o in out) if isinstance(out, tuple) else out.flatten(1, 2)
