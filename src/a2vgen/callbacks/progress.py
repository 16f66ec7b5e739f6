"""A progress bar that shows round, client and loss, and stays quiet off a terminal."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import TQDMProgressBar

from a2vgen.federation.view import federation_of


class FederatedProgressBar(TQDMProgressBar):
    """Lightning's bar, titled ``round r/R · client c`` instead of a global epoch number.

    When stdout is not a terminal (CI, ``nohup``, ``> run.log``) the bar is off: the log then holds one
    line per client visit (round, client, classes, losses, seconds) instead of bar frames.
    """

    def setup(self, trainer, module, stage: str) -> None:
        super().setup(trainer, module, stage)
        if not sys.stdout.isatty():
            self.disable()

    def on_train_epoch_start(self, trainer, module) -> None:
        super().on_train_epoch_start(trainer, module)
        federation = federation_of(trainer)
        visit = federation.current_visit
        if visit is not None and self.is_enabled:
            rounds = federation.config.max_rounds
            self.train_progress_bar.set_description(f"round {visit.round}/{rounds} · client {visit.client.id}")
