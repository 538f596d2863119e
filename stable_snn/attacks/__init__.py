"""Attacks under one contract: ``attack(model, images, labels, generator=None) -> adversarial images``.

Evaluation on top of them: what a protocol is (:mod:`.protocol`), the named protocols
(:mod:`.protocols`), the runner (:mod:`.runner`) and its results (:mod:`.results`), the
per-sample worst case (:mod:`.worst_case`) and the sanity flags (:mod:`.checks`).
"""
from .apgd import APGD, APGDT, apgd_checkpoints, dlr_loss, dlr_targeted_loss
from .assg import ASSG, AdaptiveSharpness, adaptive_sharpness
from .base import Attack, decode, eval_mode, project
from .checks import (
    FallsToZero, Flag, OnlyFooledBy, WeakerThan, ZeroGradients, beats_reference, noise_margin, zero_gradient_mask,
)
from .fab import FABT, linf_box_projection
from .fgsm import FGSM
from .gaussian import GaussianNoise
from .pgd import PGD
from .protocol import WORST_CASE, Protocol, Row, chain
from .protocols import PROTOCOLS, Budget, get_protocol, list_protocols
from .results import BatchResult, ProtocolResult, RowResult
from .rfgsm import RFGSM
from .runner import (
    ProgressEvent, ProgressTracker, evaluate_batch, evaluate_protocol, merge_batches, split_batches,
)
from .sapgd import SAPGD
from .square import Square, margin_loss
from .view import attacker_view
from .worst_case import worst_case

__all__ = [
    "APGD", "APGDT", "ASSG", "AdaptiveSharpness", "Attack", "BatchResult", "Budget", "FABT", "FGSM", "FallsToZero",
    "Flag", "GaussianNoise", "OnlyFooledBy", "PGD", "PROTOCOLS", "ProgressEvent", "ProgressTracker", "Protocol",
    "ProtocolResult", "RFGSM", "Row", "RowResult", "SAPGD", "Square", "WORST_CASE", "WeakerThan", "ZeroGradients",
    "adaptive_sharpness", "apgd_checkpoints", "attacker_view", "beats_reference", "chain", "decode", "dlr_loss",
    "dlr_targeted_loss", "eval_mode", "evaluate_batch", "evaluate_protocol", "get_protocol", "linf_box_projection",
    "list_protocols", "margin_loss", "merge_batches", "noise_margin", "project", "split_batches", "worst_case",
    "zero_gradient_mask",
]
