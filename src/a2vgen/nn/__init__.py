"""Plain PyTorch networks and losses; nothing here knows about Lightning or federation."""

from a2vgen.nn.adapter import AudioPromptAdapter
from a2vgen.nn.conditioning import AttentionPool, ConditionEncoder
from a2vgen.nn.cvae import ConditionalVAE, VAEOutput
from a2vgen.nn.flow import ConditionalFlow
from a2vgen.nn.loss import VAELossSchedule, vae_loss_terms
from a2vgen.nn.protocol import GeneratorNetwork
from a2vgen.nn.registry import GENERATORS, Registry, UnknownTypeError, register_generator

__all__ = [
    "GENERATORS",
    "AttentionPool",
    "AudioPromptAdapter",
    "ConditionEncoder",
    "ConditionalFlow",
    "ConditionalVAE",
    "GeneratorNetwork",
    "Registry",
    "UnknownTypeError",
    "VAELossSchedule",
    "VAEOutput",
    "register_generator",
    "vae_loss_terms",
]
