"""Who trains which generators, when, and with whose state."""

from a2vgen.data.clients import ClientSpec
from a2vgen.federation.checkpoint_io import LocalCheckpointIO
from a2vgen.federation.config import FederationConfig
from a2vgen.federation.loop import ClientVisit, FederatedFitLoop
from a2vgen.federation.server import PreviewPipeline
from a2vgen.federation.trainer import FederatedTrainerBase
from a2vgen.federation.view import FederationView, ResetEvent, federation_of

__all__ = [
    "ClientSpec",
    "ClientVisit",
    "FederatedFitLoop",
    "FederatedTrainerBase",
    "FederationConfig",
    "FederationView",
    "federation_of",
    "LocalCheckpointIO",
    "PreviewPipeline",
    "ResetEvent",
]


def __getattr__(name: str):
    """Names user code imported from here before they moved: ``FederatedTrainer`` (the trainer with a2vgen's
    default callbacks now lives above the federation, in :mod:`a2vgen.trainer`) and ``DiffusionServer`` (now
    :class:`PreviewPipeline`)."""
    if name == "FederatedTrainer":
        from a2vgen.trainer import FederatedTrainer

        return FederatedTrainer
    if name == "DiffusionServer":
        from a2vgen.federation import server

        return server.DiffusionServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
