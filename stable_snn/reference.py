"""The reference path: a plain fp32 transcription of the authors' published training loop.

It is the oracle of the parity tests and the baseline of ``jobs.benchmark``, so it is kept
deliberately naive and must not be optimised:

* direct encoding as a real copy ``[T, B, C, H, W]``; every stateless layer runs on a
  ``[T*B, ...]`` contiguous copy and is reshaped back (the authors' ``SeqToANNContainer``);
* every spiking layer is a Python loop over T of the per-step spike with the neuron's
  surrogate (:class:`~stable_snn.neurons.surrogate.SurrogateSpike`), joined with
  ``torch.stack`` (:func:`~stable_snn.neurons.lif_multistep_reference`);
* the MPPD recursion (Eq. 11) is a Python loop with ``torch.stack``;
* a training step in mode ``at`` runs the wasted eval-mode clean pass before RFGSM,
  RFGSM itself, then separate clean and perturbed passes (each with its own BatchNorm
  batch statistics), all in fp32;
* PGD runs its steps through the same reference forward.

It reads the parameters and buffers of a :class:`~stable_snn.models.SpikingNetwork` (same
weights, same BatchNorm buffers, which its train-mode passes update as BatchNorm does) but
calls neither the model's traversal nor its blocks: every layer is a functional call on
those tensors, so the models' backends and this loop compute the same function of the same
weights independently.  Shapes follow the library: images ``[B, C, H, W]`` in [0, 1],
logits ``[T, B, classes]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ObjectiveConfig
from .models import Features, SpikingNetwork, SpikingVGG, SpikingWRN
from .neurons import LIF, lif_multistep_reference
from .objective import PassOutput


# -- forward ----------------------------------------------------------------------------

def _seq(fn, x: torch.Tensor) -> torch.Tensor:
    """Run a stateless function on ``[T, B, *]`` through a ``[T*B, *]`` contiguous copy."""
    T, B = x.shape[:2]
    y = fn(x.reshape(T * B, *x.shape[2:]).contiguous())
    return y.reshape(T, B, *y.shape[1:]).contiguous()


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return _seq(lambda h: F.conv2d(h, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups), x)


def _linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _seq(lambda h: F.linear(h, linear.weight, linear.bias), x)


def _batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over ``[T*B, C, H, W]``: batch statistics and the running update in train mode."""
    factor = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or not bn.track_running_stats
    return _seq(lambda h: F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch, factor,
                                       bn.eps), x)


def _fire(neuron: LIF, current: torch.Tensor, record: list) -> torch.Tensor:
    spikes, _ = lif_multistep_reference(
        current, neuron.leak, neuron.threshold, neuron.surrogate, neuron.gains(), neuron.gain_form
    )
    record.append((current, spikes))
    return spikes


def _run_vgg(model: SpikingVGG, seq: torch.Tensor, record: list) -> torch.Tensor:
    x = seq
    for block in model.features:
        x = _fire(block.neuron, _batch_norm(block.bn, _conv(block.conv, x)), record)
        if block.pool is not None:
            x = _seq(lambda h: F.avg_pool2d(h, 2), x)
    x = x.reshape(*x.shape[:2], -1)
    for block in model.classifier:
        x = _fire(block.neuron, _linear(block.linear, x), record)
    return x


def _run_wrn(model: SpikingWRN, seq: torch.Tensor, record: list) -> torch.Tensor:
    x = _conv(model.stem, seq)
    for b in model.blocks:
        o = _fire(b.pre.neuron, _batch_norm(b.pre.bn, x), record)
        y = _fire(b.mid.neuron, _batch_norm(b.mid.bn, _conv(b.mid.conv, o)), record)
        y = _conv(b.conv2, y)
        short = x if b.shortcut is None else _conv(b.shortcut, o)
        x = b.combine.weight[0] * short + b.combine.weight[1] * y
    x = _fire(model.final.neuron, _batch_norm(model.final.bn, x), record)
    return _seq(lambda h: F.adaptive_avg_pool2d(h, 1).flatten(1), x)


def reference_features(model: SpikingNetwork, x: torch.Tensor) -> Features:
    """The authors'-style pass over ``model``'s weights: :class:`~stable_snn.models.Features` with every spike train."""
    if x.dim() != 4 or x.shape[1] != model.in_channels:
        raise ValueError(f"expected images of shape [B, {model.in_channels}, H, W], got {tuple(x.shape)}")
    x = (x - model.mean.to(x.dtype)) / model.std.to(x.dtype)
    seq = x.unsqueeze(0).repeat(model.timesteps, 1, 1, 1, 1)  # [T, B, C, H, W], a real copy
    record: list = []
    if isinstance(model, SpikingVGG):
        pre_logits = _run_vgg(model, seq, record)
    elif isinstance(model, SpikingWRN):
        pre_logits = _run_wrn(model, seq, record)
    else:
        raise TypeError(f"no reference forward for {type(model).__name__}")
    return Features(pre_logits, record[-1][0], tuple(s for _, s in record))


def reference_head(model: SpikingNetwork, features: Features) -> torch.Tensor:
    """Logits ``[T, B, classes]`` from :func:`reference_features`' pre-logits."""
    return _linear(model.head, features.pre_logits)


def reference_pass(model: SpikingNetwork, x: torch.Tensor) -> PassOutput:
    """Logits and features of one reference pass (the objective's :class:`~stable_snn.objective.PassOutput`)."""
    features = reference_features(model, x)
    return PassOutput(reference_head(model, features), features)


def reference_forward(model: SpikingNetwork, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[T, B, classes]`` of the reference pass."""
    return reference_pass(model, x).logits


# -- objective ----------------------------------------------------------------------------

def reference_ms_mppd(model: SpikingNetwork, clean_current: torch.Tensor, pert_current: torch.Tensor,
                      reduction: str = "mean", mppd_leak: str = "lambda") -> torch.Tensor:
    """Eqs. 11 and 14 as a per-step loop on the last spiking layer (clean branch detached).

    ``mppd_leak="lambda"`` is the authors' recursion (leak lam on the pre-gain current); ``"dlif"``
    runs the layer's DLIF dynamics with the gains detached.
    """
    last = [m for m in model.modules() if isinstance(m, LIF)][-1]
    delta = clean_current.detach() - pert_current
    gains = last.gains() if mppd_leak == "dlif" else None
    gains = gains.detach() if gains is not None else None
    eps, prev = [], torch.zeros_like(delta[0])
    for t in range(delta.shape[0]):
        d = delta[t]
        if gains is None:
            prev = last.leak * prev + d
        elif last.gain_form == "input":
            prev = last.leak * prev + gains[t] * d
        else:
            prev = last.leak * gains[t] * prev + d
        eps.append(prev)
    sq = torch.stack(eps).pow(2)
    return sq.mean() if reduction == "mean" else sq.sum() / delta.shape[1]


def reference_loss(model: SpikingNetwork, clean: PassOutput, pert: PassOutput | None, labels: torch.Tensor,
                   cfg: ObjectiveConfig) -> dict:
    """Eqs. 16-17 (MS-MPPD regulariser only): a dict of the loss terms."""
    ce_clean = F.cross_entropy(clean.logits.mean(0), labels)
    if pert is None:
        return {"total": ce_clean, "ce_clean": ce_clean}
    if cfg.regularizer != "ms_mppd":
        raise ValueError("the reference path transcribes the ms_mppd regulariser only")
    ce_pert = F.cross_entropy(pert.logits.mean(0), labels)
    stab = reference_ms_mppd(model, clean.features.last_current, pert.features.last_current, cfg.reduction,
                             cfg.mppd_leak)
    total = cfg.chi * ce_clean + (1.0 - cfg.chi) * ce_pert
    if cfg.rho > 0:
        total = total + cfg.rho * stab
    return {"total": total, "ce_clean": ce_clean, "ce_pert": ce_pert, "stability": stab}


def _set_eval(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    return modes


def _restore(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training


def reference_rfgsm(model: SpikingNetwork, images: torch.Tensor, labels: torch.Tensor, step: float, init_std: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """RFGSM as the authors ran it: a wasted eval-mode clean pass, then one signed step (fp32, BN eval).

    Draws its noise exactly as :class:`stable_snn.attacks.RFGSM` does, so a shared generator
    state gives the same start point.
    """
    modes = _set_eval(model)
    try:
        reference_forward(model, images)  # the authors' extra clean pass; its result is thrown away
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        start = (images + init_std * noise).clamp(0.0, 1.0).detach().requires_grad_(True)
        loss = F.cross_entropy(reference_forward(model, start).mean(0), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, start)
        adv = (start.detach() + step * grad.sign()).clamp(0.0, 1.0)
    finally:
        _restore(modes)
    eps = min(1.0, step + 6 * init_std)
    return torch.min(torch.max(adv, images - eps), images + eps).clamp(0.0, 1.0)


def reference_pgd(model: SpikingNetwork, images: torch.Tensor, labels: torch.Tensor, eps: float = 8 / 255,
                  alpha: float = 2 / 255, steps: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD with a uniform random start through the reference forward (fp32, BN eval)."""
    modes = _set_eval(model)
    try:
        noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        adv = torch.min(torch.max(images + (2 * noise - 1) * eps, images - eps), images + eps).clamp(0.0, 1.0)
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            loss = F.cross_entropy(reference_forward(model, adv).mean(0), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() + alpha * grad.sign()
            adv = torch.min(torch.max(adv, images - eps), images + eps).clamp(0.0, 1.0)
    finally:
        _restore(modes)
    return adv


def reference_train_step(model: SpikingNetwork, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                         labels: torch.Tensor, cfg: ObjectiveConfig, generator: torch.Generator | None = None) -> dict:
    """One step of Eq. 17 as the authors' loop does it (modes natural, gaussian, at; fp32).

    Returns the detached loss terms as floats.  Leaves the parameter gradients in ``.grad``.
    """
    if cfg.mode == "at":
        x_pert = reference_rfgsm(model, images, labels, cfg.rfgsm_step, cfg.rfgsm_init_std, generator)
    elif cfg.mode == "gaussian":
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        x_pert = (images + cfg.gaussian_sigma * noise).clamp(0.0, 1.0)
    elif cfg.mode == "natural":
        x_pert = None
    else:
        raise ValueError(f"the reference path transcribes modes natural, gaussian and at, got {cfg.mode!r}")
    optimizer.zero_grad(set_to_none=True)
    clean = reference_pass(model, images)
    pert = reference_pass(model, x_pert) if x_pert is not None else None
    terms = reference_loss(model, clean, pert, labels, cfg)
    terms["total"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}
