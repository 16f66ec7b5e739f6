"""Plain PyTorch networks and losses; nothing here knows about Lightning or federation."""

from a2vgen.nn.adapter import AudioPromptAdapter
from a2vgen.nn.conditioning import AttentionPool, ConditionEncoder
from a2vgen.nn.cvae import ConditionalVAE, VAEOutput
from a2vgen.nn.loss import VAELossSchedule, vae_loss_terms

__all__ = [
    "AudioPromptAdapter",
    "AttentionPool",
    "ConditionEncoder",
    "ConditionalVAE",
    "VAELossSchedule",
    "VAEOutput",
    "vae_loss_terms",
]
