"""Spiking networks by name: ``build_model(name, num_classes, timesteps, neuron, **kwargs)``."""
from .base import SNNOutput, SpikingNetwork, Synapse, fold
from .registry import build_model, list_models, register_model
from .vgg import SpikingVGG, vgg5, vgg11
from .wrn import ConvexCombination, SpikingWRN, wrn16

__all__ = [
    "ConvexCombination", "SNNOutput", "SpikingNetwork", "SpikingVGG", "SpikingWRN", "Synapse",
    "build_model", "fold", "list_models", "register_model", "vgg5", "vgg11", "wrn16",
]
