"""Round checkpoints: ``last.ckpt`` (the full training state) plus the newest ``N`` weights-only round files."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from a2vgen.federation.checkpoint_io import CheckpointCommitError, write_error
from a2vgen.federation.view import federation_of

log = logging.getLogger(__name__)


class RoundCheckpoint(ModelCheckpoint):
    """Save the whole federation (generators, optimizer states, ages, seen classes, cursor) at round ends.

    ``last.ckpt`` in ``dirpath`` (default: the logger's run folder) is the one full training state: it is
    what ``--ckpt_path last`` resumes from, exactly. ``round-XXXX.ckpt`` files are weights-only snapshots
    (generators with their ages, seen classes and metadata; no optimizer state, about 1/3 of the size with
    Adam): they restore the generators for ``sample``, ``export``, ``validate``/``test``/``predict`` and
    ``report``, not an exact resume. With ``keep_last: 1`` the folder holds about 1.33x one training
    state. Every file is written through the trainer's ``CheckpointIO`` (a2vgen's default writes a
    temporary file, syncs and renames it, so a killed run never leaves a torn checkpoint); the oldest round
    file to be dropped is deleted before ``last.ckpt`` is rewritten, so disk use peaks at about two
    training states during a write. ``last.ckpt`` is also written when fit stops early. A failed write
    (e.g. a full disk) stops the run with an error and leaves the previous files intact. Nothing is
    written under ``fast_dev_run``. Configured twice (a preset added with ``callbacks+=``), the last one
    is used; on the command line: ``--trainer.callbacks+=callbacks/checkpoint.yaml
    --trainer.callbacks.init_args.every_n_visits 1`` (the preset is then the last callback).

    Args:
        dirpath: folder for checkpoints.
        every_n_rounds: save every ``k`` rounds (and after the final round).
        keep_last: weights-only round snapshots kept (older ones are deleted); ``last.ckpt`` is extra.
        every_n_visits: also save ``last.ckpt`` after every ``n`` client visits (0: never), to resume mid-round.
    """

    def __init__(
        self, dirpath: str | None = None, every_n_rounds: int = 1, keep_last: int = 2, every_n_visits: int = 0
    ) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, enable_version_counter=False)
        if every_n_rounds < 1 or keep_last < 0 or every_n_visits < 0:
            raise ValueError("every_n_rounds must be >= 1; keep_last and every_n_visits must be >= 0")
        self.every_n_rounds = every_n_rounds
        self.keep_last = keep_last
        self.every_n_visits = every_n_visits

    @property
    def state_key(self) -> str:
        return f"RoundCheckpoint[dirpath={self.dirpath}]"

    # Lightning's epoch/step/validation triggers are off: rounds decide.
    def on_train_batch_end(self, *args, **kwargs) -> None: ...

    def on_train_epoch_end(self, *args, **kwargs) -> None: ...

    def on_validation_end(self, *args, **kwargs) -> None: ...

    def _save(self, trainer, path: Path, weights_only: bool = False) -> None:
        try:
            trainer.save_checkpoint(str(path), weights_only=weights_only)
        except OSError as err:
            path = err.path if isinstance(err, CheckpointCommitError) else path  # the previous save's file
            raise write_error(path, err) from err

    def _save_last(self, trainer) -> None:
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        self._save(trainer, path)
        self.last_model_path = str(path)

    def on_client_end(self, trainer, module, visit) -> None:
        if trainer.fast_dev_run:
            return
        if self.every_n_visits and federation_of(trainer).visits % self.every_n_visits == 0:
            self._save_last(trainer)

    def on_round_end(self, trainer, module, round: int) -> None:
        if trainer.fast_dev_run or not federation_of(trainer).config.due(round, self.every_n_rounds):
            return
        trainer.wait_for_checkpoint()  # the last round file may still be renamed into place in the background
        if self.keep_last:  # make room first: the current last.ckpt holds newer weights than these files
            older = sorted(Path(self.dirpath).glob(f"round-*{self.FILE_EXTENSION}"))
            for old in older[: max(len(older) - self.keep_last + 1, 0)]:
                old.unlink()
        self._save_last(trainer)
        if self.keep_last:
            path = Path(self.dirpath) / f"round-{round:04d}{self.FILE_EXTENSION}"
            self._save(trainer, path, weights_only=True)
            self.best_model_path = str(path)  # the newest round: what `ckpt_path="best"` evaluates
            log.info("round %d: checkpoint %s (weights only; full state in last.ckpt)", round, path)

    def on_train_end(self, trainer, module) -> None:
        if trainer.should_stop and federation_of(trainer).visits and not trainer.fast_dev_run:
            self._save_last(trainer)
