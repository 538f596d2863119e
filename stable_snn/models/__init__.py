"""Spiking networks by name: ``build_model(name, num_classes, timesteps, neuron, backend, **kwargs)``."""
from .backend import BACKENDS, HasBackend
from .base import Features, Feed, SpikingNetwork, Synapse
from .blocks import Block, BNSpiking, ConvBNSpiking, LinearSpiking, SpikingBlock, Trace, fold
from .fast import FastConv2d
from .init import INITS, init_weights
from .registry import build_model, list_models, register_model
from .vgg import SpikingVGG, vgg5, vgg11
from .wrn import ConvexCombination, PreActBlock, SpikingWRN, wrn16

__all__ = [
    "BACKENDS", "BNSpiking", "Block", "ConvBNSpiking", "ConvexCombination", "FastConv2d", "Features", "Feed",
    "HasBackend", "INITS", "LinearSpiking", "PreActBlock", "SpikingBlock", "SpikingNetwork", "SpikingVGG",
    "SpikingWRN", "Synapse", "Trace", "build_model", "fold", "init_weights", "list_models", "register_model", "vgg5",
    "vgg11", "wrn16",
]
