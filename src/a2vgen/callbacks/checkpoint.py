"""Round checkpoints: every ``k`` rounds, the newest ``N`` kept, plus ``last.ckpt``; atomic writes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from a2vgen.errors import UserError

log = logging.getLogger(__name__)


class RoundCheckpoint(ModelCheckpoint):
    """Save the whole federation (generators, optimizer states, ages, seen classes, cursor) at round ends.

    Files are ``round-XXXX.ckpt`` and ``last.ckpt`` in ``dirpath`` (default: the logger's run folder).
    Each is written to a temporary file and renamed, so a killed run never leaves a torn checkpoint.
    ``last.ckpt`` is also written when fit stops early, so ``--ckpt_path last`` resumes from there.
    A failed write (e.g. a full disk) stops the run with an error and leaves the previous files intact.
    Nothing is written under ``fast_dev_run``. Configured twice (a preset added with ``callbacks+=``), the
    last one is used; on the command line: ``--trainer.callbacks+=callbacks/checkpoint.yaml
    --trainer.callbacks.init_args.every_n_visits 1`` (the preset is then the last callback).

    Args:
        dirpath: folder for checkpoints.
        every_n_rounds: save every ``k`` rounds (and after the final round).
        keep_last: round checkpoints kept (older ones are deleted); ``last.ckpt`` is extra.
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

    def _save(self, trainer, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            trainer.save_checkpoint(str(tmp), weights_only=False)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            kept = path if path.exists() else "none yet"
            raise UserError(
                f"cannot write checkpoint {path}: {err.strerror or err}; previous checkpoint: {kept} (intact); "
                "free space and resume with --ckpt_path last"
            ) from err

    def _save_last(self, trainer, same_as: Path | None = None) -> None:
        """Write ``last.ckpt`` (a hard link to ``same_as`` when that file holds the same state)."""
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if same_as is None:
            self._save(trainer, path)
        else:
            tmp = path.with_name(path.name + ".tmp")
            tmp.unlink(missing_ok=True)
            os.link(same_as, tmp)
            os.replace(tmp, path)
        self.last_model_path = str(path)

    def on_client_end(self, trainer, module, visit) -> None:
        if trainer.fast_dev_run:
            return
        if self.every_n_visits and trainer.fit_loop.visits % self.every_n_visits == 0:
            self._save_last(trainer)

    def on_round_end(self, trainer, module, round: int) -> None:
        final = round >= trainer.federation.max_rounds
        if trainer.fast_dev_run or (round % self.every_n_rounds and not final):
            return
        path = None
        if self.keep_last:
            path = Path(self.dirpath) / f"round-{round:04d}{self.FILE_EXTENSION}"
            self._save(trainer, path)
            self.best_model_path = str(path)  # the newest round: what `ckpt_path="best"` loads
            log.info("round %d: checkpoint %s", round, path)
            rounds = sorted(Path(self.dirpath).glob(f"round-*{self.FILE_EXTENSION}"))
            for old in rounds[: -self.keep_last]:
                old.unlink()
        self._save_last(trainer, same_as=path)

    def on_train_end(self, trainer, module) -> None:
        if trainer.should_stop and trainer.fit_loop.visits and not trainer.fast_dev_run:
            self._save_last(trainer)
