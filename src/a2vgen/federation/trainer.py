"""A Trainer whose fit is a federation: its own arguments are the federation options."""

from __future__ import annotations

from typing import Literal

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Checkpoint, ProgressBar
from lightning.pytorch.strategies import SingleDeviceStrategy

from a2vgen.callbacks.checkpoint import RoundCheckpoint
from a2vgen.callbacks.progress import FederatedProgressBar
from a2vgen.callbacks.samples import SampleWriter
from a2vgen.federation.checkpoint_io import LocalCheckpointIO
from a2vgen.federation.config import FederationConfig
from a2vgen.federation.loop import FederatedFitLoop
from a2vgen.federation.server import DiffusionServer


class FederatedTrainer(Trainer):
    """``lightning.Trainer`` plus federation options; ``fit`` runs :class:`FederatedFitLoop`.

    Args:
        max_rounds: federated rounds.
        local_epochs: epochs each visited client trains per round.
        shared_generators: one set of generators (weights and optimizer state) trained by every client in
            turn; ``false``: each client keeps its own.
        aggregation: ``none`` or ``fedavg`` (independent generators only; sample-weighted per key).
        client_fraction: fraction of clients visited per round (seeded choice).
        shuffle_clients: visit clients in a seeded random order each round.
        federation_seed: seed of client order and per-visit randomness.
        generator_only: never load the diffusion pipeline (no denoiser, no image VAE).
        pipeline: diffusers model id or local folder, loaded lazily when ``generator_only`` is false.
        pipeline_dtype: torch dtype name for the pipeline.
        callbacks: Lightning callbacks (a2vgen adds checkpointing, progress and sample writing unless given).
        enable_checkpointing: add a :class:`~a2vgen.callbacks.RoundCheckpoint` unless one is configured.
        enable_progress_bar: add a :class:`~a2vgen.callbacks.progress.FederatedProgressBar` unless one is.
        **kwargs: ``lightning.Trainer`` arguments. Multi-device strategies are not supported yet. Checkpoints
            are written by :class:`~a2vgen.federation.checkpoint_io.LocalCheckpointIO` unless ``plugins``
            holds a ``CheckpointIO``.
    """

    def __init__(
        self,
        *args,
        max_rounds: int = 3,
        local_epochs: int = 1,
        shared_generators: bool = True,
        aggregation: Literal["none", "fedavg"] = "none",
        client_fraction: float = 1.0,
        shuffle_clients: bool = False,
        federation_seed: int = 0,
        generator_only: bool = True,
        pipeline: str | None = None,
        pipeline_dtype: str = "float32",
        callbacks: list[Callback] | Callback | None = None,
        enable_checkpointing: bool = True,
        enable_progress_bar: bool = True,
        **kwargs,
    ) -> None:
        callbacks = (
            [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        )
        if enable_checkpointing and not any(isinstance(c, Checkpoint) for c in callbacks):
            callbacks.append(RoundCheckpoint())
        if enable_progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(FederatedProgressBar())
        if not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(SampleWriter())
        plugins = kwargs.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(LocalCheckpointIO())
        kwargs.update(
            callbacks=callbacks,
            plugins=plugins,
            enable_checkpointing=enable_checkpointing,
            enable_progress_bar=enable_progress_bar,
        )
        kwargs.setdefault("num_sanity_val_steps", 0)
        kwargs.setdefault("enable_model_summary", False)
        super().__init__(*args, **kwargs)
        if not isinstance(self.strategy, SingleDeviceStrategy):
            raise NotImplementedError(
                f"strategy {type(self.strategy).__name__} is not supported yet: a2vgen federates on one device "
                "(CPU or a single GPU); multi-machine federation is planned on Flower"
            )
        self.federation = FederationConfig(
            max_rounds,
            local_epochs,
            shared_generators,
            aggregation,
            client_fraction,
            shuffle_clients,
            federation_seed,
        )
        self.server = DiffusionServer(generator_only, pipeline, pipeline_dtype)
        self.fit_loop = FederatedFitLoop(self, self.federation, self.server)

    def fit(
        self,
        model,
        train_dataloaders=None,
        val_dataloaders=None,
        datamodule=None,
        ckpt_path=None,
        weights_only: bool = True,
    ) -> None:
        """Run the federation; checkpoints are loaded with ``weights_only`` (no arbitrary unpickling)."""
        return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only=weights_only)
