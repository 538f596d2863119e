"""Attacks under one contract: ``attack(model, images, labels, generator=None) -> adversarial images``."""
from .base import Attack, decode, eval_mode, project
from .fgsm import FGSM
from .gaussian import GaussianNoise
from .pgd import PGD
from .rfgsm import RFGSM

__all__ = ["Attack", "FGSM", "GaussianNoise", "PGD", "RFGSM", "decode", "eval_mode", "project"]
