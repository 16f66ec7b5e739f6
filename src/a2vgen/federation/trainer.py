"""A Trainer whose fit is a federation: its own arguments are the federation options.

:class:`FederatedTrainerBase` adds no callbacks of its own; :class:`a2vgen.trainer.FederatedTrainer` (the one
``a2vgen fit`` builds) adds a2vgen's default checkpointing, progress bar and sample writer on top.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Literal

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus

from a2vgen import allocator
from a2vgen.errors import UserError
from a2vgen.federation.checkpoint_io import CheckpointCommitError, LocalCheckpointIO, write_error
from a2vgen.federation.compat import check_checkpoint
from a2vgen.federation.config import FederationConfig
from a2vgen.federation.loop import FederatedFitLoop
from a2vgen.federation.runs import (
    install_metrics_writer,
    prepare_logger,
    resolve_resume,
    run_dir,
    run_of_checkpoint,
    run_root,
    set_version,
)
from a2vgen.federation.server import PreviewPipeline

log = logging.getLogger(__name__)

# Trainer options with no meaning in a federation, and the federated option to use instead.
REFUSED = {
    "max_epochs": ("trainer.max_rounds and trainer.local_epochs", None),
    "min_epochs": ("trainer.max_rounds and trainer.local_epochs", None),
    "max_steps": ("trainer.max_rounds, trainer.local_epochs and trainer.limit_train_batches (per visit)", -1),
    "min_steps": ("trainer.max_rounds and trainer.local_epochs", None),
}


def refuse_epoch_options(kwargs: dict) -> None:
    """A one-line error for Trainer options the federated loop does not honour."""
    for name, (instead, default) in REFUSED.items():
        if kwargs.get(name, default) not in (default, None):
            raise UserError(f"trainer.{name}={kwargs[name]!r} has no meaning in a federated fit: set {instead}")


class FederatedTrainerBase(Trainer):
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
        page_optimizer_state: keep the optimizer state of generators a visit does not train in files of the
            run folder, memory-mapped (see :mod:`a2vgen.federation.paging`; results are unchanged);
            ``auto``: when the generators' parameters exceed 1 GiB (e.g. ~140 default per-class generators).
        stack_generators: train a visit's generators of one network structure as one batched step per batch
            (``torch.func.vmap`` over their stacked weights; see
            :meth:`~a2vgen.modules.stacked_steps.StackedSteps.stacking`): each still gets its own batches, gradient
            clipping and AdamW state, with results equal to training apart up to floating-point rounding.
            A batch then holds one batch of every key (``limit_train_batches`` counts these).
        reuse_freed_memory: keep freed memory in the process for reuse instead of mapping large tensors afresh
            every step (glibc ``malloc`` settings, process-wide; see :mod:`a2vgen.allocator`): ~20 % faster
            steps on the CPU. No effect off glibc.
        generator_only: never load the diffusion pipeline (no denoiser, no image VAE).
        pipeline: diffusers model id or local folder, loaded lazily when ``generator_only`` is false.
        pipeline_dtype: torch dtype name for the pipeline.
        callbacks: Lightning callbacks, completed by :meth:`default_callbacks`.
        enable_checkpointing: passed to :meth:`default_callbacks` (and to Lightning).
        enable_progress_bar: passed to :meth:`default_callbacks` (and to Lightning).
        **kwargs: ``lightning.Trainer`` arguments. Multi-device strategies are not supported yet. Checkpoints
            are written by :class:`~a2vgen.federation.checkpoint_io.LocalCheckpointIO` unless ``plugins``
            holds a ``CheckpointIO``. In federated terms: ``fast_dev_run=n`` runs one round, one local epoch
            of ``n`` batches per visit, without logs or checkpoints; ``limit_train_batches`` limits the
            batches of each local epoch of a visit; ``max_epochs``/``max_steps``/``min_*`` are refused (use
            ``max_rounds``/``local_epochs``). Sanity checking and the model summary are off unless asked for.
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
        page_optimizer_state: bool | Literal["auto"] = "auto",
        stack_generators: bool = True,
        reuse_freed_memory: bool = True,
        generator_only: bool = True,
        pipeline: str | None = None,
        pipeline_dtype: str = "float32",
        callbacks: list[Callback] | Callback | None = None,
        enable_checkpointing: bool = True,
        enable_progress_bar: bool = True,
        **kwargs,
    ) -> None:
        refuse_epoch_options(kwargs)
        if reuse_freed_memory:
            allocator.reuse_freed_memory()
        callbacks = (
            [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        )
        callbacks = self.default_callbacks(callbacks, enable_checkpointing, enable_progress_bar)
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
        for name, default in (("num_sanity_val_steps", 0), ("enable_model_summary", False)):
            if kwargs.get(name) is None:  # LightningCLI passes None for "not set"
                kwargs[name] = default
        super().__init__(*args, **kwargs)
        if not isinstance(self.strategy, SingleDeviceStrategy):
            raise NotImplementedError(
                f"strategy {type(self.strategy).__name__} is not supported yet: a2vgen federates on one device "
                "(CPU or a single GPU); multi-machine federation is planned on Flower"
            )
        if self.fast_dev_run:
            max_rounds, local_epochs = 1, 1
        for logger in self.loggers:
            prepare_logger(logger)
        self.federation = FederationConfig(
            max_rounds,
            local_epochs,
            shared_generators,
            aggregation,
            client_fraction,
            shuffle_clients,
            federation_seed,
            page_optimizer_state,
            stack_generators,
        )
        self.server = PreviewPipeline(generator_only, pipeline, pipeline_dtype)
        self.fit_loop = FederatedFitLoop(self, self.federation, self.server)

    def default_callbacks(
        self, callbacks: list[Callback], enable_checkpointing: bool, enable_progress_bar: bool
    ) -> list[Callback]:
        """The configured ``callbacks`` completed with defaults (here: none; called before Lightning's init)."""
        return callbacks

    def checkpoint_dir(self) -> str | None:
        """The fixed folder checkpoints go to, where ``--ckpt_path last`` looks (``None``: the run folders)."""
        return getattr(self.checkpoint_callback, "dirpath", None)

    @property
    def log_dir(self) -> str | None:
        """The run folder (``<save_dir>/<name>/<version>`` for every logger, W&B included)."""
        folder = run_dir(self.loggers[0]) if self.loggers else None
        return str(folder) if folder is not None else super().log_dir

    def fit(
        self,
        model,
        train_dataloaders=None,
        val_dataloaders=None,
        datamodule=None,
        ckpt_path=None,
        weights_only: bool = True,
    ) -> None:
        """Run the federation; checkpoints are loaded with ``weights_only`` (no arbitrary unpickling).

        ``ckpt_path`` may be ``"last"`` (the newest run of this logger's ``save_dir``/``name``), a run
        folder, or a checkpoint file; a resumed run continues in its own folder (one ``metrics.csv``).
        A run that fails before writing metrics or checkpoints (e.g. a config error) leaves no folder behind.
        """
        if ckpt_path is not None:
            logger = self.loggers[0] if self.loggers else None
            ckpt_path = str(resolve_resume(str(ckpt_path), logger, self.checkpoint_dir()))
            check_checkpoint(model, ckpt_path, resuming=True)
        folder = Path(self.log_dir) if self.loggers and self.log_dir else None
        existed = folder is not None and folder.exists()
        self._install_metrics_writers()
        try:
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only=weights_only)
        except Exception:
            try:
                self.wait_for_checkpoint()
            except UserError as err:  # the fit's own error is the one raised
                log.error("%s", err)
            if folder is not None and not existed and _holds_only_config(folder):
                shutil.rmtree(folder, ignore_errors=True)
                for parent in (folder.parent, folder.parent.parent):  # <save_dir>/<name>, <save_dir> if empty
                    with contextlib.suppress(OSError):
                        parent.rmdir()
            raise
        self.wait_for_checkpoint()

    def wait_for_checkpoint(self) -> None:
        """Wait for the last checkpoint's background sync and rename; its failure is a ``UserError``."""
        wait = getattr(self.strategy.checkpoint_io, "wait", None)
        if wait is None:
            return
        try:
            wait()
        except CheckpointCommitError as err:
            raise write_error(err.path, err) from err

    def save_checkpoint(self, filepath, weights_only: bool = False, storage_options=None) -> None:
        """Lightning's; outside ``fit`` the file is in place when this returns (during ``fit``,
        :class:`~a2vgen.federation.checkpoint_io.LocalCheckpointIO` syncs and renames it in the background)."""
        super().save_checkpoint(filepath, weights_only, storage_options)
        fitting = self.state.fn == TrainerFn.FITTING and self.state.status == TrainerStatus.RUNNING
        wait = getattr(self.strategy.checkpoint_io, "wait", None)
        if not fitting and wait is not None:
            wait()

    def validate(self, model=None, dataloaders=None, ckpt_path=None, verbose=True, datamodule=None, weights_only=True):
        """Evaluate on every client's val split; from a run's checkpoint, results go to that run's folder."""
        self._evaluate_from(model, ckpt_path)
        return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(self, model=None, dataloaders=None, ckpt_path=None, verbose=True, datamodule=None, weights_only=True):
        """Evaluate on every client's test split; from a run's checkpoint, results go to that run's folder."""
        self._evaluate_from(model, ckpt_path)
        return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(
        self, model=None, dataloaders=None, datamodule=None, return_predictions=None, ckpt_path=None, weights_only=True
    ):
        """Write synthetic samples; from a run's checkpoint, into that run's folder."""
        self._evaluate_from(model, ckpt_path)
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)

    def _evaluate_from(self, model, ckpt_path) -> None:
        if ckpt_path is not None and Path(ckpt_path).is_file():
            if model is not None:
                check_checkpoint(model, ckpt_path, resuming=False)
            run = run_of_checkpoint(ckpt_path)
            root = run_root(self.loggers[0]) if self.loggers else None
            if root is not None and run is not None and run.parent.resolve() == root.resolve():
                set_version(self.loggers[0], run.name)
        self._install_metrics_writers()

    def _install_metrics_writers(self) -> None:
        for logger in self.loggers:
            install_metrics_writer(logger)


def _holds_only_config(folder: Path) -> bool:
    return folder.is_dir() and {p.name for p in folder.iterdir()} <= {"config.yaml", "hparams.yaml"}
