"""Flower processes on this machine (tests, benchmarks, trying a deployment): ports, environment, start-up."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env(flwr_home: Path, bin_dir: Path, src: Path | None = None) -> dict[str, str]:
    """The environment for Flower processes of a local run: its own ``FLWR_HOME``, no update checks, no
    telemetry, no per-run dependency installation, no hub or W&B traffic; ``src`` goes on ``PYTHONPATH``."""
    path = os.pathsep.join(p for p in (str(src) if src else None, os.environ.get("PYTHONPATH")) if p)
    return dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=path,
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        HF_HUB_OFFLINE="1",
        WANDB_MODE="offline",
    )


def wait_for_port(port: int, process: subprocess.Popen, what: str, log: Path | None = None) -> None:
    """Return once ``process`` accepts connections on ``port``; raise (with the tail of ``log``) if it exits
    or takes over 60 s."""
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            tail = f": {log.read_text()[-2000:]}" if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} did not start{tail}")
        time.sleep(0.3)
