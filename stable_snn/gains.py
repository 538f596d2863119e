"""L2 gains of each spiking layer's MPPD (Theorem 3.1 and its correction).

The map dI -> eps of Eq. 11 over T steps is the lower-triangular matrix L_T with entries
prod_{j=k+1..t} leak[j].  A layer's input current is ``I = post(sum of feeds)`` (its
:class:`~stable_snn.models.Synapse`), affine in the spikes feeding it, so a spike perturbation
``ds`` moves the current by ``dI = A ds`` with ``A`` the synapse's linear part; the layer's exact
gain is ``sigma_max(L_T) * ||A||_2``.  The paper's bound ``sqrt(1/(1 - lam)) * ||A||`` does not
hold for long horizons (at lam = 0.99 it falls below the exact gain from T = 30 on); Young's
inequality gives ``||A|| * sum_k lam^k``.

``||A||_2`` is the operator norm of the synapse as the network computes it: power iteration on
``A^T A`` with ``A`` applied through the model's own modules in fp32 (convolutions at the
layer's real input size, with their stride and padding; pooling; BatchNorm's eval-mode scale;
WRN's residual sums of several spike sources) and ``A^T`` by autograd, so no kernel is flattened
into a matrix and no path is left out.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .models import Synapse

# The operator norms run in fp32: float64 convolutions have no fast CPU kernel (a WRN16 took ~20x
# longer), and fp32 power iteration is accurate to ~1e-6 relative, far below what the gains are for.
DTYPE = torch.float32


def _leak_vector(leak, T: int) -> torch.Tensor:
    leak_t = torch.as_tensor(leak, dtype=torch.float64)
    if leak_t.dim() == 0:
        return leak_t.expand(T)
    if leak_t.shape != (T,):
        raise ValueError(f"leak must be a scalar or have shape [T]=[{T}], got {tuple(leak_t.shape)}")
    return leak_t


def leak_matrix(leak, timesteps: int) -> torch.Tensor:
    """L_T of Eq. 11: ``[T, T]`` lower-triangular, L[t, k] = prod_{j=k+1..t} leak[j]."""
    lam = _leak_vector(leak, timesteps)
    L = torch.zeros(timesteps, timesteps, dtype=torch.float64)
    for t in range(timesteps):
        L[t, t] = 1.0
        for k in range(t - 1, -1, -1):
            L[t, k] = L[t, k + 1] * lam[k + 1]
    return L


def temporal_gain(leak, timesteps: int) -> float:
    """sigma_max(L_T): the exact L2 gain of Eq. 11 per unit ||A||."""
    return float(torch.linalg.matrix_norm(leak_matrix(leak, timesteps), ord=2))


def paper_bound_factor(leak: float) -> float:
    """Theorem 3.1's factor sqrt(1 / (1 - lam))."""
    return math.inf if leak >= 1 else math.sqrt(1.0 / (1.0 - leak))


def young_bound_factor(leak: float, timesteps: int) -> float:
    """Young's inequality factor sum_{k<T} lam^k = (1 - lam^T) / (1 - lam)."""
    return float(sum(leak**k for k in range(timesteps)))


# -- the operator norm of a synapse --------------------------------------------------------


def operator_norm(apply: Callable[[list[torch.Tensor]], torch.Tensor], shapes: list[tuple[int, ...]],
                  iters: int = 100, generator: torch.Generator | None = None, tol: float = 1e-6) -> float:
    """``||A||_2`` of the linear part of an affine map of fp32 inputs of ``shapes``, by Lanczos on ``A^T A``.

    ``A v = apply(v) - apply(0)``; ``A^T u`` is the gradient of ``<apply(v), u>`` in ``v``.  Lanczos
    with full reorthogonalisation (at most ``iters`` products with ``A^T A``, from a random start
    drawn from ``generator``) stops when the top Ritz pair's residual ``beta_k |s_k|`` is below
    ``tol`` times its value; unlike power iteration it separates nearly equal top singular values
    in a few dozen steps.
    """
    sizes = [math.prod(s) for s in shapes]
    zeros = [torch.zeros(s, dtype=DTYPE) for s in shapes]
    with torch.no_grad():
        offset = apply(zeros)

    def gram(q: torch.Tensor) -> torch.Tensor:  # A^T A q on the flattened inputs
        v = [_layout(x.view(s)).requires_grad_(True) for x, s in zip(q.split(sizes), shapes)]
        u = apply(v) - offset
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(u, v, grad_outputs=u.detach())])

    q = torch.randn(sum(sizes), dtype=DTYPE, generator=generator)
    basis, alphas, betas = [], [], []
    theta = 0.0
    for k in range(min(iters, sum(sizes))):
        norm = float(q.norm())
        if norm == 0.0:
            break
        q = q / norm
        basis.append(q)
        w = gram(q)
        alphas.append(float(w @ q))
        Q = torch.stack(basis, 1)
        for _ in range(2):  # full reorthogonalisation, twice for fp32
            w = w - Q @ (Q.T @ w)
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(T)
        theta, beta = float(values[-1]), float(w.norm())
        if beta * abs(float(vectors[-1, -1])) <= tol * max(theta, 1e-30) or beta <= 1e-12 * max(theta, 1e-30):
            break
        betas.append(beta)
        q = w
    return math.sqrt(max(theta, 0.0))


def _layout(x: torch.Tensor) -> torch.Tensor:
    # Image-shaped inputs in channels-last memory: the CPU input-gradient of a batch-1 convolution
    # took ~10 ms in NCHW against ~1 ms channels-last (fp32, one thread).
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _chain(ops: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
    for op in ops:
        x = op(x)
    return x


def synapse_map(syn: Synapse) -> tuple[list[str | None], Callable[[list[torch.Tensor]], torch.Tensor]]:
    """``(sources, apply)``: the spike sources of ``syn`` in order and its map on CPU fp32 copies of its
    modules in eval mode (BatchNorm on running statistics), ``apply([x per source]) -> I``."""
    sources = list(dict.fromkeys(f.source for f in syn.feeds))
    copies: dict[int, nn.Module] = {}

    def own(op: nn.Module) -> nn.Module:
        if id(op) not in copies:
            copies[id(op)] = copy.deepcopy(op).to("cpu", DTYPE).eval().requires_grad_(False)
        return copies[id(op)]

    feeds = [(sources.index(f.source), tuple(own(op) for op in f.ops), f.coef) for f in syn.feeds]
    post = tuple(own(op) for op in syn.post)

    def apply(xs: list[torch.Tensor]) -> torch.Tensor:
        return _chain(post, sum(coef * _chain(ops, xs[i]) for i, ops, coef in feeds))

    return sources, apply


@torch.no_grad()
def source_shapes(model, image_size: int = 32) -> dict[str | None, tuple[int, ...]]:
    """``{layer name: [1, *]}``: the shape of one image's spikes of every spiking layer (None: the
    encoded image), from one eval-mode pass over a blank image of ``image_size``."""
    size = model.image_size or image_size
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        image = torch.zeros(1, model.in_channels, size, size, device=next(model.parameters()).device)
        spikes = model.forward_features(image, record_spikes=True).spikes
    finally:
        for m, training in modes:
            m.training = training
    shapes = {name: tuple(s.shape[1:]) for (name, _), s in zip(model.spiking_blocks(), spikes)}
    return {None: (1, model.in_channels, size, size), **shapes}


def synapse_norm(syn: Synapse, shapes: dict[str | None, tuple[int, ...]], iters: int = 100,
                 generator: torch.Generator | None = None, tol: float = 1e-6) -> float:
    """``||A||_2`` of one synapse's linear part at its sources' shapes (:func:`source_shapes`)."""
    sources, apply = synapse_map(syn)
    return operator_norm(apply, [shapes[s] for s in sources], iters, generator, tol)


# -- per-layer gains ------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerGain:
    """L2 gain of one layer's MPPD (Theorem 3.1 and the exact value)."""

    name: str
    weight_norm: float  # ||A||_2 of the layer's synapse
    exact_gain: float  # sigma_max(L_T) * ||A||_2 (with the DLIF gains)
    paper_bound: float  # sqrt(1/(1-lam)) * ||A||_2
    young_bound: float  # ||A||_2 * sum_k lam^k
    bound_violated: bool  # paper_bound < exact_gain


def layer_gain(name: str, weight_norm: float, leak_profile, leak: float, timesteps: int) -> LayerGain:
    exact = temporal_gain(leak_profile, timesteps) * weight_norm
    paper = paper_bound_factor(leak) * weight_norm
    young = young_bound_factor(leak, timesteps) * weight_norm
    return LayerGain(name, weight_norm, exact, paper, young, paper < exact * (1 - 1e-9))


def mppd_gains(model, iters: int = 100, image_size: int = 32) -> list[LayerGain]:
    """Per-layer L2 gains of the MPPD of a spiking network (see the module docstring).

    The temporal factor is that of the layer's own dynamics: for DLIF in the paper's form the
    leak of step t is ``lam * a[t]``; in the "input" form ``a[t]`` scales the input, so it
    multiplies L_T's columns (``L diag(a)``).  The paper's bound is computed with the nominal lam.
    ``image_size`` is used for networks that accept any size (WRN).
    """
    gen = torch.Generator().manual_seed(0)
    shapes = source_shapes(model, image_size)
    out = []
    for syn in model.synapses():
        neuron = syn.neuron
        wn = synapse_norm(syn, shapes, iters, gen)
        L = leak_matrix(neuron.leak_profile(), neuron.timesteps)
        scale = neuron.input_scale()
        if scale is not None:
            L = L * scale.detach().double().cpu()[None, :]
        g = layer_gain(syn.name, wn, neuron.leak_profile(), neuron.leak, neuron.timesteps)
        exact = float(torch.linalg.matrix_norm(L, ord=2)) * wn
        out.append(LayerGain(g.name, wn, exact, g.paper_bound, g.young_bound, g.paper_bound < exact * (1 - 1e-9)))
    return out
