"""A progress bar that shows round, client and loss."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class FederatedProgressBar(TQDMProgressBar):
    """Lightning's bar, titled ``round r/R · client c · epoch e`` instead of a global epoch number."""

    def on_train_epoch_start(self, trainer, module) -> None:
        super().on_train_epoch_start(trainer, module)
        loop = trainer.fit_loop
        visit = getattr(loop, "current_visit", None)
        if visit is not None:
            rounds = loop.config.max_rounds
            self.train_progress_bar.set_description(f"round {visit.round}/{rounds} · client {visit.client.id}")
