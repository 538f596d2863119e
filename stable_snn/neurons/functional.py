"""Pure per-step math of the LIF (Eq. 1) and DLIF neurons, time-major ``[T, B, *]``.

Forms of the dynamic gain ``a[t]`` (one scalar per layer and time step):

* ``"leak"`` (the paper's text, default):  v[t] = lam * a[t] * u[t-1] + I[t]
* ``"input"`` (the authors' public code):  v[t] = lam * u[t-1] + a[t] * I[t]

and for both  s[t] = H(v[t] - theta),  u[t] = v[t] * (1 - s[t])  (hard reset to 0),
u[0] = 0.  LIF is DLIF with a == 1.

:func:`lif_multistep_reference` is a direct per-step transcription built from
:func:`~stable_snn.neurons.surrogate.spike`, so autograd records every step and any
:class:`~stable_snn.neurons.surrogate.Surrogate` shapes the backward pass.  It is the
``"reference"`` backend of the models and the oracle of the tests; the fused kernels of
the ``"eager"`` and ``"compiled"`` backends are in :mod:`stable_snn.neurons.fused`.
"""
from __future__ import annotations

import torch

from .surrogate import Surrogate, as_surrogate, spike

GAIN_FORMS = ("leak", "input")


def check_gain(gain: torch.Tensor | None, timesteps: int) -> None:
    if gain is not None and gain.shape != (timesteps,):
        raise ValueError(f"gain must have shape [T]=[{timesteps}], got {tuple(gain.shape)}")


def check_gain_form(gain_form: str) -> None:
    if gain_form not in GAIN_FORMS:
        raise ValueError(f"gain_form must be one of {GAIN_FORMS}, got {gain_form!r}")


def lif_multistep_reference(
    current: torch.Tensor,
    leak: float,
    threshold: float,
    surrogate: Surrogate | float = 1.0,
    gain: torch.Tensor | None = None,
    gain_form: str = "leak",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step LIF/DLIF (Eq. 1).  ``current``: ``[T, B, *]``.

    ``surrogate``: a :class:`~stable_snn.neurons.surrogate.Surrogate` or a triangle width
    (Eq. 18).  Returns ``(spikes, v)``, both ``[T, B, *]`` (v before reset).
    """
    T = current.shape[0]
    check_gain(gain, T)
    check_gain_form(gain_form)
    surrogate = as_surrogate(surrogate)
    surrogate.check(current)
    u = torch.zeros_like(current[0])
    spikes, potentials = [], []
    for t in range(T):
        if gain is None:
            v = leak * u + current[t]
        elif gain_form == "leak":
            v = leak * gain[t] * u + current[t]
        else:
            v = leak * u + gain[t] * current[t]
        s = spike(v, threshold, surrogate, t)
        u = v * (1.0 - s)
        spikes.append(s)
        potentials.append(v)
    return torch.stack(spikes), torch.stack(potentials)
