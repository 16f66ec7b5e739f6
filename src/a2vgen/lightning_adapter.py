"""The one door to Lightning's private API (pinned to Lightning 2.6; nothing else in a2vgen touches it).

Lightning 2.x has no public way to customise ``Trainer.fit``'s loop; the federation subclasses the
private ``_FitLoop`` here and drives it through a few public-named methods:

- :class:`EpochFitLoop`: a fit loop whose subclass decides what each training epoch iterates
  (:meth:`~EpochFitLoop.attach_loader`, then :meth:`~EpochFitLoop.train_epoch`), with Lightning's
  validation trigger off, its restart flags cleared on resume and its checkpoint state in two plain hooks.
- :func:`fit_loop_state`: the fit loop's entry in a saved checkpoint (Lightning's checkpoint layout).
- :class:`CheckpointHparamsHook`: a ``LightningCLI`` mixin replacing the private step that would copy a
  checkpoint's hyper-parameters over the parsed config.
- :func:`attached_trainer`: a module's Trainer, or ``None`` outside one.
- Loggers: :func:`started_experiment`, :func:`use_experiment`, :func:`set_logger_version` and the W&B
  logger's :func:`wandb_run_id` / :func:`wandb_init_args` / :func:`wandb_offline` (run folders known before
  training, ``metrics.csv`` continued on resume, offline fallback).

``tests/test_lightning_internals.py`` checks the behaviour that depends on these (a short fit, an exact
mid-round resume, no validation during fit): a Lightning release that moves them fails there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loops.fit_loop import _FitLoop
from lightning.pytorch.loops.utilities import _select_data_fetcher
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader

#: the Lightning minor version these internals were written against
LIGHTNING_MINOR = "2.6"


class EpochFitLoop(_FitLoop):
    """``Trainer.fit``'s loop, run by a subclass epoch by epoch over loaders it chooses.

    A subclass implements :attr:`finished`, :meth:`prepare` (called once before training, after a
    checkpoint was loaded), :meth:`run_epochs` (calls :meth:`attach_loader` and :meth:`train_epoch`),
    :meth:`checkpoint_state` and :meth:`load_checkpoint_state`.
    """

    def __init__(self, trainer) -> None:
        super().__init__(trainer, min_epochs=0, max_epochs=-1)
        self.epoch_loop._should_check_val_fx = lambda *_: False  # no validation inside fit
        self._loader: DataLoader | None = None

    # ------------------------------------------------------------------ the subclass's part
    @property
    def finished(self) -> bool:
        """Whether fit has nothing (left) to train."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Set up before the first epoch (a resumed checkpoint's state is already loaded)."""

    def run_epochs(self) -> None:
        """Train: any number of :meth:`attach_loader` + :meth:`train_epoch` calls."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict:
        """The loop's state saved into checkpoints."""
        return {}

    def load_checkpoint_state(self, state: dict) -> None:
        """Receive :meth:`checkpoint_state`'s dict from a checkpoint (before :meth:`prepare`)."""

    # ------------------------------------------------------------------ what the subclass calls
    def attach_loader(self, loader: DataLoader, batches: int) -> None:
        """Make ``loader`` (its first ``batches`` batches per epoch) what the next epochs iterate."""
        combined = CombinedLoader(loader, "max_size_cycle")
        combined.limits = [batches]
        if self._data_fetcher is not None:
            self._data_fetcher.teardown()
        self._combined_loader = combined
        self._data_fetcher = _select_data_fetcher(self.trainer, RunningStage.TRAINING)
        self._data_fetcher.setup(combined)
        iter(self._data_fetcher)
        self.max_batches = len(combined)
        self._loader = loader

    def train_epoch(self, epoch: int) -> None:
        """One Lightning training epoch over the attached loader (epoch hooks, callbacks, loggers as usual).

        The loader's sampler gets ``epoch`` (Lightning's epoch start sets it to its own global epoch count),
        so the batch order depends on what the caller counts, e.g. a client visit's local epoch.
        """
        self.on_advance_start()
        if hasattr(self._loader.sampler, "set_epoch"):
            self._loader.sampler.set_epoch(epoch)
        self.advance()
        self.on_advance_end()
        self.on_iteration_done()

    # ------------------------------------------------------------------ Lightning's side
    @property
    def done(self) -> bool:
        return self.finished

    @property
    def skip(self) -> bool:
        return self.finished

    def setup_data(self) -> None:
        """Loaders come from :meth:`attach_loader`, not from ``train_dataloader``."""

    def run(self) -> None:
        if self.finished:
            return
        self.prepare()
        self._restarting = False  # a resume continues from the subclass's own cursor
        self.epoch_loop.restarting = False
        self.on_run_start()
        self.run_epochs()
        self.on_run_end()

    def on_save_checkpoint(self) -> dict:
        return self.checkpoint_state()

    def on_load_checkpoint(self, state_dict: dict) -> None:
        self.load_checkpoint_state(state_dict)


def fit_loop_state(checkpoint: Mapping) -> dict:
    """What the fit loop's :meth:`EpochFitLoop.checkpoint_state` wrote into a loaded checkpoint (``{}``: none)."""
    state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
    return state if isinstance(state, dict) else {}


class CheckpointHparamsHook:
    """``LightningCLI`` mixin: instead of copying a checkpoint's hyper-parameters over the parsed config
    (Lightning's private ``_parse_ckpt_path``), call :meth:`check_ckpt_path` with the subcommand's path."""

    def check_ckpt_path(self, path: str | None) -> None:
        """Inspect ``--ckpt_path`` before anything is instantiated (``None``: not given)."""

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        self.check_ckpt_path(self.config[subcommand].get("ckpt_path") if subcommand else None)


def attached_trainer(module) -> object | None:
    """The Trainer a LightningModule is attached to, or ``None`` (``module.trainer`` raises when detached)."""
    return module._trainer


def started_experiment(logger: Logger) -> object | None:
    """The logger's experiment (writer, W&B run) if it was created already, else ``None``; creates nothing."""
    return getattr(logger, "_experiment", None)


def use_experiment(logger: Logger, experiment: object) -> None:
    """Make ``experiment`` the logger's experiment before it creates its own (e.g. a CSV writer of ours)."""
    logger._experiment = experiment


def set_logger_version(logger: Logger, version: int | str) -> None:
    """Point a logger that wrote nothing yet at run ``version`` (W&B: the run id; CSV/TensorBoard: the folder)."""
    if isinstance(logger, WandbLogger):
        logger._id = logger._wandb_init["id"] = version
    else:
        logger._version = version


def wandb_run_id(logger: WandbLogger) -> str | None:
    """The run id a W&B logger will use (``None``: W&B picks one when the run starts)."""
    return logger._id


def wandb_init_args(logger: WandbLogger) -> dict:
    """The keyword arguments a W&B logger will pass to ``wandb.init`` (mutable until the run starts)."""
    return logger._wandb_init


def wandb_absolute_dir(logger: WandbLogger) -> None:
    """Hand ``wandb.init`` an absolute ``dir`` (the logger's own ``save_dir`` is left as given): W&B's service
    process, started once per Python process, resolves a relative ``dir`` against its own working directory,
    not the caller's (a second run after a ``chdir`` wrote its ``.wandb`` file elsewhere)."""
    if logger._wandb_init.get("dir"):
        logger._wandb_init["dir"] = os.path.abspath(logger._wandb_init["dir"])


def wandb_offline(logger: WandbLogger) -> bool:
    """Whether a W&B logger was created with ``offline=True``."""
    return logger._offline
