"""Run folders: where a run's config, metrics, checkpoints and exports live, and which run to resume.

A run folder is ``<save_dir>/<name>/<version>`` whatever the logger: ``version_N`` for the CSV and
TensorBoard loggers, the run id for W&B (assigned before training, so W&B resumes the same run).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import string
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from a2vgen.errors import UserError
from a2vgen.federation.checkpoint import readable
from a2vgen.federation.metrics_file import RunMetricsWriter
from a2vgen.lightning_adapter import (
    set_logger_version,
    started_experiment,
    use_experiment,
    wandb_absolute_dir,
    wandb_init_args,
    wandb_offline,
    wandb_run_id,
)

log = logging.getLogger(__name__)

LAST = "last.ckpt"
CHECKPOINTS = "checkpoints"  # a run folder's checkpoint subfolder


def run_of_checkpoint(path: str | Path) -> Path | None:
    """The run folder of a checkpoint file in a run's ``checkpoints/`` (``None`` for a file elsewhere)."""
    path = Path(path)
    return path.parent.parent if path.parent.name == CHECKPOINTS else None


def run_root(logger: Logger) -> Path | None:
    """The folder holding a logger's runs (``<save_dir>/<name>``), or ``None`` when it has no local folder."""
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return Path(logger.root_dir)
    if isinstance(logger, WandbLogger) and logger.save_dir:
        return Path(logger.save_dir) / str(logger.name)
    return None


def run_dir(logger: Logger) -> Path | None:
    """The run folder of ``logger`` (W&B: ``<save_dir>/<project>/<run id>``)."""
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return Path(logger.log_dir)
    root = run_root(logger)
    return None if root is None or logger.version is None else root / str(logger.version)


def prepare_logger(logger: Logger) -> None:
    """Give ``wandb.init`` an absolute folder and a W&B logger its run id now (its run folder is known
    before training), fall back to offline when the W&B server cannot be reached, and let a CSV logger
    continue ``metrics.csv`` on resume."""
    if isinstance(logger, WandbLogger) and started_experiment(logger) is None:
        wandb_absolute_dir(logger)
        if wandb_run_id(logger) is None:  # a W&B-style run id: 8 lowercase letters and digits
            set_version(logger, "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8)))
        _offline_without_network(logger)


def install_metrics_writer(logger: Logger) -> None:
    """Use :class:`RunMetricsWriter` for a CSV logger whose writer does not exist yet."""
    if isinstance(logger, CSVLogger) and started_experiment(logger) is None:
        os.makedirs(logger.root_dir, exist_ok=True)
        use_experiment(logger, RunMetricsWriter(logger.log_dir))


def set_version(logger: Logger, version: str) -> None:
    """Point ``logger`` at the run folder ``version`` (before it wrote anything)."""
    if isinstance(logger, WandbLogger):
        set_logger_version(logger, version)
    elif isinstance(logger, (CSVLogger, TensorBoardLogger)):
        set_logger_version(
            logger, int(version[len("version_") :]) if re.fullmatch(r"version_\d+", version) else version
        )


def newest_run(root: Path) -> Path | None:
    """The most recently written run under ``root`` that holds checkpoints."""
    runs = [run_of_checkpoint(p) for p in root.glob(f"*/{CHECKPOINTS}/*.ckpt")]
    return max(runs, key=lambda p: max(c.stat().st_mtime for c in (p / CHECKPOINTS).glob("*.ckpt")), default=None)


def resume_checkpoint(folder: Path) -> Path:
    """``last.ckpt`` in ``folder``: the one full training state (round files hold weights only)."""
    path = folder / LAST
    if path.is_file() and readable(path):
        return path
    rounds = sorted(folder.glob("round-*.ckpt"))
    hint = f"; {rounds[-1]} holds the generators (sample, export, evaluate) but no optimizer state" if rounds else ""
    raise UserError(f"{path} is missing or damaged: cannot resume exactly{hint}")


def resolve_resume(ckpt_path: str, logger: Logger | None, checkpoint_dir: str | None = None) -> Path:
    """The checkpoint ``fit --ckpt_path`` means, pointing ``logger`` at the run it continues.

    ``last``: the newest run of this config's logger (``<save_dir>/<name>``), or the newest checkpoint in
    ``checkpoint_dir`` when checkpoints go to a fixed folder; a run folder: that run; a checkpoint file
    inside a run's ``checkpoints/``: that run, continued in its own folder; another file: a new run.
    """
    root = run_root(logger) if logger is not None else None
    path = Path(ckpt_path)
    if ckpt_path == "last" and checkpoint_dir is not None:
        return resume_checkpoint(Path(checkpoint_dir))
    if ckpt_path == "last":
        run = newest_run(root) if root is not None else None
        if run is None:
            raise UserError(
                f"--ckpt_path last: no run with checkpoints under {root or 'the default root dir'} to resume; "
                "drop --ckpt_path to start a new run, or give a run folder or checkpoint file"
            )
    elif path.is_dir():
        run = path.parent if path.name == CHECKPOINTS else path
    elif path.is_file():
        run = run_of_checkpoint(path)
        if run is not None and _same(run.parent, root):
            set_version(logger, run.name)
            log.info("resuming run %s from %s", run, path)
        else:
            log.info("starting a new run from %s", path)
        return path
    else:
        raise UserError(f"--ckpt_path {ckpt_path}: no such checkpoint file or run folder")
    ckpt = resume_checkpoint(run / CHECKPOINTS)
    if _same(run.parent, root):
        set_version(logger, run.name)
    log.info("resuming run %s from %s", run, ckpt.name)
    return ckpt


def _same(folder: Path, root: Path | None) -> bool:
    return root is not None and folder.resolve() == root.resolve()


def _offline_without_network(logger: WandbLogger, timeout: float = 5.0) -> None:
    """Switch an online W&B logger to offline (with a warning) when its server does not answer."""
    mode = (wandb_init_args(logger).get("mode") or os.environ.get("WANDB_MODE") or "online").lower()
    if wandb_offline(logger) or mode in ("offline", "dryrun", "disabled"):
        return
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        wandb_init_args(logger)["mode"] = "offline"
        log.warning(
            "W&B server %s unreachable (%s): logging offline to %s; upload later with `wandb sync`, "
            "or set WANDB_MODE=offline to skip this check",
            url.geturl(), err, logger.save_dir,
        )  # fmt: skip
