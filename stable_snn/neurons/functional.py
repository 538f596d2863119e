"""Pure multi-step math of the LIF (Eq. 1) and DLIF neurons, time-major ``[T, B, *]``.

Forms of the dynamic gain ``a[t]`` (one scalar per layer and time step):

* ``"leak"`` (the paper's text, default):  v[t] = lam * a[t] * u[t-1] + I[t]
* ``"input"`` (the authors' public code):  v[t] = lam * u[t-1] + a[t] * I[t]

and for both  s[t] = H(v[t] - theta),  u[t] = v[t] * (1 - s[t])  (hard reset to 0),
u[0] = 0.  LIF is DLIF with a == 1.

Two implementations share these semantics:

* :func:`lif_multistep_reference` -- a direct per-step transcription built from
  :class:`~stable_snn.neurons.surrogate.TriangleSpike`; autograd records every
  step (the oracle of the tests and of the benchmark's reference path).
* :class:`MultiStepLIF` -- one autograd Function over all T steps that saves
  only the membrane potentials ``v[1:T]`` (plus ``I`` in the "input" form) and
  runs the backward recursion by hand.  The neuron state is kept in fp32 even
  when the surrounding layers run in bf16/fp16.
"""
from __future__ import annotations

import torch

from .surrogate import heaviside, spike, triangle_grad

GAIN_FORMS = ("leak", "input")


def _check_gain(gain: torch.Tensor | None, timesteps: int) -> None:
    if gain is not None and gain.shape != (timesteps,):
        raise ValueError(f"gain must have shape [T]=[{timesteps}], got {tuple(gain.shape)}")


def lif_multistep_reference(
    current: torch.Tensor,
    leak: float,
    threshold: float,
    width: float,
    gain: torch.Tensor | None = None,
    gain_form: str = "leak",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step LIF/DLIF (Eq. 1).  ``current``: ``[T, B, *]``.

    Returns ``(spikes, v)``, both ``[T, B, *]`` (v before reset).
    """
    T = current.shape[0]
    _check_gain(gain, T)
    u = torch.zeros_like(current[0])
    spikes, potentials = [], []
    for t in range(T):
        if gain is None:
            v = leak * u + current[t]
        elif gain_form == "leak":
            v = leak * gain[t] * u + current[t]
        else:
            v = leak * u + gain[t] * current[t]
        s = spike(v, threshold, width)
        u = v * (1.0 - s)
        spikes.append(s)
        potentials.append(v)
    return torch.stack(spikes), torch.stack(potentials)


class MultiStepLIF(torch.autograd.Function):
    """Fused T-step LIF/DLIF with the triangle surrogate (Eq. 1, 18).

    forward(current [T, B, *] fp32, gain [T] or None, leak, threshold, width,
    input_form) -> (spikes [T, B, *], v [T, B, *]).  The gradient flows through
    the reset term ``u = v (1 - s)`` as in the per-step transcription.
    """

    @staticmethod
    def forward(ctx, current, gain, leak, threshold, width, input_form):
        T = current.shape[0]
        v_all = torch.empty_like(current)
        s_all = torch.empty_like(current)
        u = torch.zeros_like(current[0])
        for t in range(T):
            if gain is None:
                v = torch.add(current[t], u, alpha=leak)
            elif input_form:
                v = torch.add(current[t] * gain[t], u, alpha=leak)
            else:
                v = current[t] + (leak * gain[t]) * u
            s = heaviside(v - threshold)
            v_all[t] = v
            s_all[t] = s
            u = v * (1.0 - s)
        ctx.leak, ctx.threshold, ctx.width, ctx.input_form = leak, threshold, width, input_form
        ctx.has_gain = gain is not None
        ctx.save_for_backward(v_all, gain if gain is not None else None, current if (input_form and gain is not None) else None)
        ctx.mark_non_differentiable(v_all)
        return s_all, v_all

    @staticmethod
    def backward(ctx, grad_s, grad_v_unused):
        v_all, gain, current = ctx.saved_tensors
        leak, threshold, width, input_form = ctx.leak, ctx.threshold, ctx.width, ctx.input_form
        T = v_all.shape[0]
        grad_current = torch.empty_like(v_all)
        grad_gain = torch.zeros(T, dtype=v_all.dtype, device=v_all.device) if ctx.has_gain else None
        grad_u = torch.zeros_like(v_all[0])  # dL/du[t], carried back from v[t+1]
        for t in range(T - 1, -1, -1):
            v = v_all[t]
            sg = triangle_grad(v, threshold, width)
            not_s = 1.0 - heaviside(v - threshold)
            # dL/dv[t] = dL/ds[t] * s'(v) + dL/du[t] * ((1 - s) - v * s'(v))
            grad_v = grad_s[t] * sg + grad_u * (not_s - v * sg)
            if ctx.has_gain and input_form:
                grad_current[t] = grad_v * gain[t]
                grad_gain[t] = (grad_v * current[t]).sum()
                step_leak = leak
            elif ctx.has_gain:
                grad_current[t] = grad_v
                if t > 0:
                    u_prev = v_all[t - 1] * (1.0 - heaviside(v_all[t - 1] - threshold))
                    grad_gain[t] = leak * (grad_v * u_prev).sum()
                step_leak = leak * gain[t]
            else:
                grad_current[t] = grad_v
                step_leak = leak
            grad_u = grad_v * step_leak  # dL/du[t-1] = dL/dv[t] * dv[t]/du[t-1]
        return grad_current, grad_gain, None, None, None, None


def lif_multistep(
    current: torch.Tensor,
    leak: float,
    threshold: float,
    width: float,
    gain: torch.Tensor | None = None,
    gain_form: str = "leak",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused LIF/DLIF over ``[T, B, *]``; same semantics as the reference.

    The state is computed in at least fp32 whatever the dtype of ``current``; spikes are
    returned in the dtype of ``current`` (0/1 is exact in every float type).
    """
    if gain_form not in GAIN_FORMS:
        raise ValueError(f"gain_form must be one of {GAIN_FORMS}, got {gain_form!r}")
    T = current.shape[0]
    _check_gain(gain, T)
    dtype = current.dtype
    state = torch.promote_types(dtype, torch.float32)  # fp32 state under bf16/fp16
    cur = current.to(state)
    g = gain.to(state) if gain is not None else None
    s, v = MultiStepLIF.apply(cur, g, float(leak), float(threshold), float(width), gain_form == "input")
    return s.to(dtype), v
