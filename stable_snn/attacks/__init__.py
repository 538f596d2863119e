"""Attacks under one contract: ``attack(model, images, labels, generator=None) -> adversarial images``.

Evaluation on top of them: named protocols and their runner (:mod:`.protocols`), the
per-sample worst case (:mod:`.worst_case`) and the gradient-obfuscation checks (:mod:`.checks`).
"""
from .apgd import APGD, apgd_checkpoints, dlr_loss
from .base import Attack, decode, eval_mode, project
from .checks import BeatsReference, FallsToZero, Flag, ZeroGradients, noise_margin, zero_gradient_mask
from .fgsm import FGSM
from .gaussian import GaussianNoise
from .pgd import PGD
from .protocols import (
    PROTOCOLS, WORST_CASE, BatchResult, ProgressEvent, ProgressTracker, Protocol, ProtocolResult, Row, RowResult,
    evaluate_batch, evaluate_protocol, get_protocol, list_protocols, merge_batches, split_batches,
)
from .rfgsm import RFGSM
from .square import Square, margin_loss
from .worst_case import worst_case

__all__ = [
    "APGD", "Attack", "BatchResult", "BeatsReference", "FGSM", "FallsToZero", "Flag", "GaussianNoise", "PGD",
    "PROTOCOLS", "ProgressEvent", "ProgressTracker", "Protocol", "ProtocolResult", "RFGSM", "Row", "RowResult",
    "Square", "WORST_CASE", "ZeroGradients", "apgd_checkpoints", "decode", "dlr_loss", "eval_mode",
    "evaluate_batch", "evaluate_protocol", "get_protocol", "list_protocols", "margin_loss", "merge_batches",
    "noise_margin", "project", "split_batches", "worst_case", "zero_gradient_mask",
]
