"""``metrics.csv`` that survives resumes, kills and full disks, and the loggers' flush and truncation on resume."""

from __future__ import annotations

import csv
import io
import os

from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from a2vgen.errors import UserError
from a2vgen.io import atomic_path
from a2vgen.lightning_adapter import started_experiment


class RunMetricsWriter(ExperimentWriter):
    """The CSV logger's writer for one run folder, continued across resumes.

    Lightning's writer deletes an existing ``metrics.csv`` when a run folder is reused and rewrites it in
    place when columns are added (a full disk then leaves it empty). This one keeps the rows already
    written, and every save writes a complete new file under a temporary name and renames it, so
    ``metrics.csv`` always holds either the previous or the new rows.
    """

    def _check_log_dir_exists(self) -> None:
        """Keep the rows of a resumed run (see :meth:`truncate`)."""
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def rows(self) -> int:
        """Data rows in ``metrics.csv`` (pending rows are not counted: call :meth:`save` first)."""
        if not os.path.isfile(self.metrics_file_path):
            return 0
        with open(self.metrics_file_path, newline="") as file:
            return max(sum(1 for _ in csv.reader(file)) - 1, 0)

    def truncate(self, rows: int) -> None:
        """Keep the first ``rows`` data rows: what a checkpoint saw (rows of visits after it are redone)."""
        self.metrics = []
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            lines = list(csv.reader(file))
        if len(lines) > rows + 1:
            self._write(lines[0], [dict(zip(lines[0], line)) for line in lines[1 : rows + 1]])

    def save(self) -> None:
        if not self.metrics:
            return
        old: list[dict] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                old = list(csv.DictReader(file))
        keys = set(self.metrics_keys).union(*self.metrics)
        pending, self.metrics = self.metrics, []  # on failure these rows are dropped: a resume redoes them
        self._write(sorted(keys), old + pending)
        self.metrics_keys = sorted(keys)

    def _write(self, keys: list[str], rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        with atomic_path(self.metrics_file_path) as tmp:
            tmp.write_text(buffer.getvalue(), newline="")


def flush_loggers(trainer) -> None:
    """Write pending metrics; a failed write is a one-line error (earlier rows and checkpoints are intact)."""
    for logger in trainer.loggers:
        try:
            logger.save()
        except OSError as err:
            raise UserError(
                f"cannot write metrics to {trainer.log_dir}: {err.strerror or err}; rows written so far and "
                "the checkpoints are intact: free space and resume with --ckpt_path last"
            ) from err


def metrics_rows(trainer) -> int | None:
    """Rows in the run's ``metrics.csv`` (``None`` without a CSV logger)."""
    writers = [lg.experiment for lg in trainer.loggers if isinstance(started_experiment(lg), RunMetricsWriter)]
    return writers[0].rows() if writers else None


def truncate_metrics(trainer, rows: int | None) -> None:
    """Drop the rows a resumed checkpoint did not see (visits after it are trained and logged again)."""
    if rows is None:
        return
    for logger in trainer.loggers:
        if isinstance(started_experiment(logger), RunMetricsWriter):
            logger.experiment.truncate(rows)
