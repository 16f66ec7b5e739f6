"""Who trains which generators, when, and with whose state."""

from a2vgen.data.clients import ClientSpec
from a2vgen.federation.checkpoint_io import LocalCheckpointIO
from a2vgen.federation.config import FederationConfig
from a2vgen.federation.loop import ClientVisit, FederatedFitLoop
from a2vgen.federation.server import DiffusionServer
from a2vgen.federation.trainer import FederatedTrainerBase
from a2vgen.federation.view import FederationView, ResetEvent, federation_of

__all__ = [
    "ClientSpec",
    "ClientVisit",
    "DiffusionServer",
    "FederatedFitLoop",
    "FederatedTrainerBase",
    "FederationConfig",
    "FederationView",
    "federation_of",
    "LocalCheckpointIO",
    "ResetEvent",
]


def __getattr__(name: str):
    """``a2vgen.federation.FederatedTrainer``, where user code used to import it from: the trainer with
    a2vgen's default callbacks now lives above the federation, in :mod:`a2vgen.trainer`."""
    if name == "FederatedTrainer":
        from a2vgen.trainer import FederatedTrainer

        return FederatedTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
