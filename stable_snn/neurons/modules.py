"""Stateless spiking-neuron modules over time-major tensors ``[T, B, *]``.

A module holds only its hyper-parameters, its surrogate gradient and, for DLIF, the
trainable gains ``a[t]``; membrane state lives inside one forward call, so two identical
calls give identical outputs and nothing leaks between batches.  Calling the module runs
the per-step math (:func:`~stable_snn.neurons.functional.lif_multistep_reference`); the
models' fused backends read the same hyper-parameters and gains
(:func:`~stable_snn.neurons.fused.fused_lif`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..perturbation import mppd
from .functional import check_gain_form, lif_multistep_reference
from .surrogate import Surrogate, Triangle

MPPD_FORMS = ("lambda", "dlif")  # the recursion of a layer's MPPD: lam alone, or the DLIF dynamics


def check_mppd_form(form: str) -> None:
    if form not in MPPD_FORMS:
        raise ValueError(f"MPPD form must be one of {MPPD_FORMS}, got {form!r}")


class LIF(nn.Module):
    """Leaky integrate-and-fire neuron, Eq. 1, hard reset, a surrogate gradient (Eq. 18 by default).

    ``surrogate``: a :class:`~stable_snn.neurons.surrogate.Surrogate`; ``surrogate_width``
    (omega) is the shorthand for ``Triangle(surrogate_width)``; give at most one of them.
    Input: input current ``I`` of shape ``[T, B, *]`` with ``T == timesteps``.
    Output: spikes ``[T, B, *]`` in the dtype of ``I`` (the state is at least fp32).
    """

    def __init__(
        self,
        timesteps: int,
        leak: float = 0.99,
        threshold: float = 1.0,
        surrogate_width: float | None = None,
        surrogate: Surrogate | None = None,
    ) -> None:
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"leak must be in [0, 1], got {leak}")
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if surrogate_width is not None and surrogate is not None:
            raise ValueError("give surrogate or surrogate_width, not both")
        if surrogate_width is not None and not surrogate_width > 0:
            raise ValueError(f"surrogate_width must be > 0, got {surrogate_width}")
        self.timesteps = timesteps
        self.leak = leak
        self.threshold = threshold
        self.surrogate = surrogate if surrogate is not None else Triangle(surrogate_width or 1.0)

    @property
    def surrogate(self) -> Surrogate:
        """The surrogate gradient of the spike function (changes only the backward pass)."""
        return self._surrogate

    @surrogate.setter
    def surrogate(self, value: Surrogate) -> None:
        if not isinstance(value, Surrogate):
            raise ValueError(f"surrogate must be a Surrogate (Triangle, Arctan), got {value!r}")
        self._surrogate = value

    gain_form = "leak"

    def gains(self) -> torch.Tensor | None:
        """The dynamic gains ``a[t]`` (``[T]``), or None for plain LIF."""
        return None

    def leak_profile(self) -> torch.Tensor:
        """Per-step leak of the MPPD recursion (Eq. 11): ``lam`` or ``lam * a[t]``, ``[T]``."""
        g = self.gains()
        lam = torch.full((self.timesteps,), float(self.leak))
        if g is None or self.gain_form == "input":
            return lam
        return lam * g.detach().float().cpu()

    def perturbation_dynamics(self, delta_current: torch.Tensor, form: str = "lambda") -> torch.Tensor:
        """MPPD (Eq. 11) of this layer for an input-current difference ``[T, B, *]`` (before any gain).

        ``form`` (:data:`MPPD_FORMS`):

        * ``"lambda"`` (default, the authors' code): eps[t] = lam * eps[t-1] + dI[t] on the pre-gain
          current; the DLIF gains take no part, so the regulariser never pushes them.
        * ``"dlif"`` (the paper's DLIF dynamics): the leak of step t is ``lam * a[t]`` in the "leak"
          form, the difference is scaled by ``a[t]`` in the "input" form; the gains are detached, so
          the regulariser shapes the weights only.
        """
        check_mppd_form(form)
        g = self.gains()
        if form == "lambda" or g is None:
            return mppd(delta_current, self.leak)
        g = g.detach().to(delta_current.dtype)
        if self.gain_form == "input":
            return mppd(delta_current * g.view(-1, *([1] * (delta_current.dim() - 1))), self.leak)
        return mppd(delta_current, self.leak * g)

    def input_scale(self) -> torch.Tensor | None:
        """Per-step scale of the input current (``a[t]`` in the "input" form), else None."""
        g = self.gains()
        return g if (g is not None and self.gain_form == "input") else None

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        if current.dim() < 2 or current.shape[0] != self.timesteps:
            raise ValueError(
                f"{type(self).__name__} expects input of shape [T={self.timesteps}, B, *], "
                f"got {tuple(current.shape)}"
            )
        state = torch.promote_types(current.dtype, torch.float32)  # fp32 state under bf16/fp16
        gain = self.gains()
        spikes, _ = lif_multistep_reference(current.to(state), self.leak, self.threshold, self.surrogate,
                                            gain.to(state) if gain is not None else None, self.gain_form)
        return spikes.to(current.dtype)

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}, leak={self.leak}, threshold={self.threshold}, surrogate={self.surrogate}"


class DLIF(LIF):
    """Dynamic LIF: LIF with a trainable gain ``a[t]`` per time step (init 1).

    ``gain_form="leak"`` (default, the paper's Sec. 3.3): v[t] = lam a[t] u[t-1] + I[t].
    ``gain_form="input"`` (the authors' code):          v[t] = lam u[t-1] + a[t] I[t].
    """

    def __init__(self, timesteps: int, *args, gain_form: str = "leak", **kwargs) -> None:
        super().__init__(timesteps, *args, **kwargs)
        check_gain_form(gain_form)
        self.gain_form = gain_form
        self.gain = nn.Parameter(torch.ones(timesteps))

    def gains(self) -> torch.Tensor:
        return self.gain

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gain_form={self.gain_form!r}"


NEURONS = {"lif": LIF, "dlif": DLIF}


def build_neuron(name: str, timesteps: int, **kwargs) -> LIF:
    """Create a neuron by name (``lif`` or ``dlif``)."""
    if name not in NEURONS:
        raise ValueError(f"neuron must be one of {sorted(NEURONS)}, got {name!r}")
    if name == "lif":
        kwargs.pop("gain_form", None)
    return NEURONS[name](timesteps, **kwargs)
