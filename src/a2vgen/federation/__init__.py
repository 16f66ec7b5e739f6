"""Who trains which generators, when, and with whose state."""

from a2vgen.data.clients import ClientSpec
from a2vgen.federation.checkpoint_io import LocalCheckpointIO
from a2vgen.federation.config import FederationConfig
from a2vgen.federation.loop import ClientVisit, FederatedFitLoop
from a2vgen.federation.server import DiffusionServer
from a2vgen.federation.trainer import FederatedTrainer

__all__ = [
    "ClientSpec",
    "ClientVisit",
    "DiffusionServer",
    "FederatedFitLoop",
    "FederatedTrainer",
    "FederationConfig",
    "LocalCheckpointIO",
]
