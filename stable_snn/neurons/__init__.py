"""Spiking neurons: surrogates (Eq. 18 and others), LIF/DLIF step math (Eq. 1), modules, fused kernels."""
from .functional import GAIN_FORMS, lif_multistep_reference
from .modules import DLIF, LIF, MPPD_FORMS, NEURONS, build_neuron
from .scope import attacker_surrogate, spiking_layers, surrogate_width
from .surrogate import Arctan, Surrogate, SurrogateSpike, Triangle, arctan_grad, heaviside, spike, triangle_grad

__all__ = [
    "Arctan", "DLIF", "GAIN_FORMS", "LIF", "MPPD_FORMS", "NEURONS", "Surrogate", "SurrogateSpike", "Triangle",
    "arctan_grad", "attacker_surrogate", "build_neuron", "heaviside", "lif_multistep_reference",
    "spike", "spiking_layers", "surrogate_width", "triangle_grad",
]
