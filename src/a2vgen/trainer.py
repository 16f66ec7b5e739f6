"""The Trainer ``a2vgen fit`` builds: the federation's trainer with a2vgen's default callbacks.

It sits above both :mod:`a2vgen.federation` and :mod:`a2vgen.callbacks`, so that neither imports the other
to decide defaults.
"""

from __future__ import annotations

import logging

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import BasePredictionWriter, Checkpoint, ProgressBar

from a2vgen.callbacks.checkpoint import RoundCheckpoint
from a2vgen.callbacks.progress import FederatedProgressBar
from a2vgen.callbacks.samples import SampleWriter
from a2vgen.federation.trainer import FederatedTrainerBase

log = logging.getLogger(__name__)


class FederatedTrainer(FederatedTrainerBase):
    """:class:`~a2vgen.federation.trainer.FederatedTrainerBase` (all of its arguments) plus default callbacks.

    Unless configured: a :class:`~a2vgen.callbacks.RoundCheckpoint` (with ``enable_checkpointing``), a
    :class:`~a2vgen.callbacks.progress.FederatedProgressBar` (with ``enable_progress_bar``) and a
    :class:`~a2vgen.callbacks.SampleWriter` for ``predict``. Configured twice (a preset added with
    ``callbacks+=``), the last ``RoundCheckpoint`` is used.
    """

    def default_callbacks(
        self, callbacks: list[Callback], enable_checkpointing: bool, enable_progress_bar: bool
    ) -> list[Callback]:
        callbacks = _last_round_checkpoint_wins(callbacks)
        if enable_checkpointing and not any(isinstance(c, Checkpoint) for c in callbacks):
            callbacks.append(RoundCheckpoint())
        if enable_progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(FederatedProgressBar())
        if not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(SampleWriter())
        return callbacks

    def checkpoint_dir(self) -> str | None:
        return next((c.dirpath for c in self.callbacks if isinstance(c, RoundCheckpoint) and c.dirpath), None)


def _last_round_checkpoint_wins(callbacks: list[Callback]) -> list[Callback]:
    """Keep only the last :class:`RoundCheckpoint` of the list: a preset added with ``callbacks+=`` replaces
    the config's own instead of clashing with it."""
    rounds = [c for c in callbacks if isinstance(c, RoundCheckpoint)]
    if len(rounds) > 1:
        log.info("%d RoundCheckpoint callbacks configured: using the last one", len(rounds))
    return [c for c in callbacks if not isinstance(c, RoundCheckpoint) or c is rounds[-1]]
