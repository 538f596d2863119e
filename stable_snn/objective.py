"""The robust stable training step (Sec. 3.4, Eqs. 14, 16, 17).

    L = chi * CE(f(x), y) + (1 - chi) * CE(f(x~), y) + rho * R(x, x~)         (Eqs. 16, 17)

with x~ the perturbed batch (Gaussian noise or RFGSM) and R the MS-MPPD (Eq. 14) or its
l1 form MPPD-TV-l1 of the last spiking layer's input current (or TASAD / STD of its spikes,
Table 2).  The clean branch of R is detached, as in the authors' code: the gradient of R
flows through the perturbed pass only.  The MPPD recursion is the authors' (leak lam on the
pre-gain current, ``objective.mppd_leak: lambda``), so the DLIF gains of the last layer are
outside R's graph; ``mppd_leak: dlif`` uses the layer's DLIF dynamics with the gains
detached.  Modes:

* ``natural``:  CE(f(x), y)
* ``gaussian``: x~ = clamp(x + sigma N(0, 1))
* ``at``:       x~ = RFGSM(x)
* ``at_reg``:   as ``at`` plus the SNN-RAT regulariser after every optimiser step.

The clean and perturbed batches each get their own BatchNorm batch statistics (as in the
paper's two passes); :class:`TwoPass` runs both passes (or, with ``batched``, one pass over both
batches with per-half statistics) in one module call, so a DDP wrapper sees exactly one forward
per backward.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import RFGSM, Attack, GaussianNoise, eval_mode, project
from .config import MPPD_REGULARIZERS, ObjectiveConfig
from .models import Features, SpikingNetwork
from .perturbation import mppd_tv_l1, ms_mppd, std, tasad
from .regularizers import snn_rat_step


class PassOutput(NamedTuple):
    """One forward pass of the objective: logits ``[T, B, classes]`` and the :class:`Features` behind them."""

    logits: torch.Tensor
    features: Features


class TwoPass(nn.Module):
    """Clean and perturbed forward passes of one model, with internals: ``(clean, perturbed)``.

    Each pass is ``model.forward_features`` then ``model.forward_head``, inside this one
    module call (a DDP wrapper sees one forward per backward).  ``record_spikes=False`` leaves
    ``features.spikes`` empty: MS-MPPD needs only the last layer's input current.  With
    ``batched`` the two batches run as one pass over ``[x; x_pert]`` whose training-mode
    BatchNorm statistics are per half (``bn_groups=2``): the function of two passes, and the
    same running-statistics updates (clean, then perturbed), with every convolution and matmul
    on the joint batch.  Two passes are the default: on a 2-core CPU a VGG5 T=8 batch-32 step
    took 13.1-13.5 s batched against 10.2-11.2 s in two passes (one thread, warm steps
    alternated in one process); whether the joint batch pays off on a GPU is not measured.
    """

    def __init__(self, model: SpikingNetwork, record_spikes: bool = True, batched: bool = False) -> None:
        super().__init__()
        self.model = model
        self.record_spikes = record_spikes
        self.batched = batched

    def _pass(self, x: torch.Tensor, bn_groups: int = 1) -> PassOutput:
        features = self.model.forward_features(x, record_spikes=self.record_spikes, bn_groups=bn_groups)
        return PassOutput(self.model.forward_head(features), features)

    def forward(self, x: torch.Tensor, x_pert: torch.Tensor | None = None) -> tuple[PassOutput, PassOutput | None]:
        if x_pert is None:
            return self._pass(x), None
        if not self.batched:
            return self._pass(x), self._pass(x_pert)
        clean, pert = halves(self._pass(torch.cat([x, x_pert.to(x.dtype)]), bn_groups=2))
        return clean, pert


def halves(out: PassOutput) -> tuple[PassOutput, PassOutput]:
    """The first and second half of a pass over two stacked batches (every tensor split on its batch dim 1)."""
    f = out.features
    logits, pre, current = (t.chunk(2, dim=1) for t in (out.logits, f.pre_logits, f.last_current))
    spikes = [s.chunk(2, dim=1) for s in f.spikes]
    return tuple(PassOutput(logits[i], Features(pre[i], current[i], tuple(s[i] for s in spikes))) for i in (0, 1))


def build_perturbation(cfg: ObjectiveConfig) -> Attack | None:
    """The training perturbation of a mode (None for ``natural``)."""
    if cfg.mode == "natural":
        return None
    if cfg.mode == "gaussian":
        return GaussianNoise(cfg.gaussian_sigma)
    return RFGSM(step=cfg.rfgsm_step, init_std=cfg.rfgsm_init_std)


def needs_spikes(cfg: ObjectiveConfig) -> bool:
    """Whether the regulariser reads spikes (TASAD, STD) rather than the last layer's input current."""
    return cfg.regularizer not in MPPD_REGULARIZERS


def stability_term(model: SpikingNetwork, clean: PassOutput, pert: PassOutput, cfg: ObjectiveConfig) -> torch.Tensor:
    """The regulariser R of Eq. 17 on the last spiking layer (MS-MPPD, MPPD-TV-l1, TASAD or STD)."""
    if not needs_spikes(cfg):
        last = model.spiking_layers()[-1]
        delta = clean.features.last_current.detach().float() - pert.features.last_current.float()
        eps = last.perturbation_dynamics(delta, cfg.mppd_leak)
        return (ms_mppd if cfg.regularizer == "ms_mppd" else mppd_tv_l1)(eps, cfg.reduction)
    if not clean.features.spikes or not pert.features.spikes:
        raise ValueError(f"regularizer {cfg.regularizer!r} needs the spikes: run the passes with record_spikes=True")
    distance = tasad if cfg.regularizer == "tasad" else std
    return distance(clean.features.spikes[-1].detach(), pert.features.spikes[-1])


@dataclass
class LossTerms:
    total: torch.Tensor
    task: torch.Tensor
    ce_clean: torch.Tensor
    ce_pert: torch.Tensor | None
    stability: torch.Tensor | None
    logits_clean: torch.Tensor  # [B, C], decoded
    logits_pert: torch.Tensor | None


def stable_loss(model: SpikingNetwork, clean: PassOutput, pert: PassOutput | None, labels: torch.Tensor,
                cfg: ObjectiveConfig) -> LossTerms:
    """Eqs. 16-17 from the two passes' outputs."""
    logits_clean = clean.logits.float().mean(0)
    ce_clean = F.cross_entropy(logits_clean, labels)
    if pert is None:
        return LossTerms(ce_clean, ce_clean, ce_clean, None, None, logits_clean, None)
    logits_pert = pert.logits.float().mean(0)
    ce_pert = F.cross_entropy(logits_pert, labels)
    task = cfg.chi * ce_clean + (1.0 - cfg.chi) * ce_pert
    stab = stability_term(model, clean, pert, cfg)
    total = task + cfg.rho * stab if cfg.rho > 0 else task
    return LossTerms(total, task, ce_clean, ce_pert, stab, logits_clean, logits_pert)


def perturb(
    perturbation: Attack,
    model: SpikingNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """The training perturbation of a batch, its input gradient in ``precision``.

    ``"fp32"`` is the attack's own contract (autocast off).  ``"bf16"`` runs the attack's
    :meth:`~stable_snn.attacks.Attack.perturb` under bf16 autocast with the same eval mode,
    ball and clamping: bf16 has fp32's exponent range, so the input gradient cannot
    underflow (PROTOCOL.md's warning is about fp16 without loss scaling, which stays
    refused here).  Attacks that override ``__call__`` (Gaussian noise) run as they are.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"attack precision must be fp32 or bf16, got {precision!r}")
    if precision == "fp32" or type(perturbation).__call__ is not Attack.__call__:
        return perturbation(model, images, labels, generator)
    images = images.detach().float()
    if perturbation.eps == 0:
        return images.clone()
    with eval_mode(model), autocast(images.device, precision):
        adv = perturbation.perturb(model, images, labels, generator)
    return project(adv.detach().float(), images, perturbation.eps)


def autocast(device: torch.device, precision: str):
    """Autocast context for ``fp32`` (none), ``bf16`` or ``fp16``; neuron state stays fp32."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class StepStats:
    """Detached per-step numbers (sums over the batch where marked)."""

    loss: float
    task_loss: float
    ce_clean: float
    ce_pert: float | None
    stability: float | None
    correct_clean: int  # count
    correct_pert: int | None  # count
    batch: int
    finite: bool


def train_step(
    model: SpikingNetwork,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: ObjectiveConfig,
    *,
    perturbation: Attack | None = None,
    generator: torch.Generator | None = None,
    forward: nn.Module | None = None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    reg_generator: torch.Generator | None = None,
    attack_precision: str = "fp32",
) -> StepStats:
    """One optimisation step of Eq. 17.

    ``model`` is the bare network (for the attack and the regulariser); ``forward`` the
    module that runs both passes (a :class:`TwoPass`, possibly DDP-wrapped; default
    ``TwoPass(model)``, recording spikes only for the TASAD/STD regularisers).  The
    perturbation's input gradient is computed in ``attack_precision`` (default fp32, the attack
    contract; bf16 on request, see :func:`perturb`).  The attack and both passes
    share one autocast region, so each weight is cast to the low precision once per step.
    A non-finite loss skips the update and returns ``finite=False``.
    """
    forward = forward if forward is not None else TwoPass(model, record_spikes=needs_spikes(cfg))
    if perturbation is None and cfg.mode != "natural":
        perturbation = build_perturbation(cfg)
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, precision):
        x_pert = None
        if perturbation is not None and cfg.mode != "natural":
            x_pert = perturb(perturbation, model, images, labels, generator, attack_precision)
        clean, pert = forward(images, x_pert)
    terms = stable_loss(model, clean, pert, labels, cfg)
    finite = bool(torch.isfinite(terms.total.detach()))
    if finite:
        if scaler is not None:
            scaler.scale(terms.total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            terms.total.backward()
            optimizer.step()
        if cfg.mode == "at_reg":
            snn_rat_step(model, cfg.beta, reg_generator, cfg.reg_row_fraction, cfg.reg_row_min_outputs)
    return step_stats(terms, labels, finite)


@torch.no_grad()
def step_stats(terms: LossTerms, labels: torch.Tensor, finite: bool) -> StepStats:
    """The detached numbers of one step's loss terms."""
    def value(t: torch.Tensor | None) -> float | None:
        return float(t.detach()) if t is not None else None

    def correct(logits: torch.Tensor | None) -> int | None:
        return int((logits.argmax(1) == labels).sum()) if logits is not None else None

    return StepStats(
        loss=value(terms.total), task_loss=value(terms.task), ce_clean=value(terms.ce_clean),
        ce_pert=value(terms.ce_pert), stability=value(terms.stability), correct_clean=correct(terms.logits_clean),
        correct_pert=correct(terms.logits_pert), batch=int(labels.shape[0]), finite=finite,
    )


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with momentum; weight decay on conv/linear weights and DLIF gains alike (as the paper's SGD).

    On CPU and CUDA the fused implementation (one kernel per parameter group instead of a
    few passes over every weight) does the same arithmetic.
    """
    params = list(model.parameters())
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)
