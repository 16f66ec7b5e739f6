"""Run ``a2vgen`` in this process with one injected fault (``test_faults.py`` runs it as a subprocess).

Usage: ``python fault_child.py FAULT N -- <a2vgen arguments>``. Faults, at the ``N``-th occurrence:

- ``kill-step``: ``kill -9`` this process inside a training step;
- ``kill-after-metrics``: ``kill -9`` right after a visit's metrics were written (before its checkpoint);
- ``kill-in-checkpoint``: ``kill -9`` halfway through writing a checkpoint file;
- ``enospc-checkpoint``: a checkpoint write fails halfway with ``ENOSPC``;
- ``enospc-metrics``: a ``metrics.csv`` write fails halfway with ``ENOSPC``.
"""

from __future__ import annotations

import errno
import io
import os
import pathlib
import signal
import sys

import torch


def _count(n: int):
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    return hit


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def inject(fault: str, n: int, patch=setattr) -> None:
    """Install ``fault``; ``patch(owner, name, value)`` replaces an attribute (``monkeypatch.setattr`` in-process)."""
    hit = _count(n)
    if fault == "kill-step":
        from a2vgen.modules.base import BaseGeneratorModule

        step = BaseGeneratorModule.training_step

        def training_step(self, batch, batch_idx):
            if hit():
                _kill()
            return step(self, batch, batch_idx)

        patch(BaseGeneratorModule, "training_step", training_step)
    elif fault == "kill-after-metrics":
        from a2vgen.federation import loop

        flush = loop.flush_loggers

        def flush_loggers(trainer):
            flush(trainer)
            if trainer.fit_loop.current_visit is not None and hit():
                _kill()

        patch(loop, "flush_loggers", flush_loggers)
    elif fault in ("kill-in-checkpoint", "enospc-checkpoint"):
        save = torch.save

        def torch_save(obj, f, *args, **kwargs):
            if not isinstance(f, (str, os.PathLike)) or not hit():
                return save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            with open(f, "wb") as file:
                file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            if fault == "kill-in-checkpoint":
                _kill()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

        patch(torch, "save", torch_save)
    elif fault == "enospc-metrics":
        write_text = pathlib.Path.write_text

        def path_write_text(self, data, *args, **kwargs):
            if self.name == "metrics.csv.tmp" and hit():
                write_text(self, data[: len(data) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return write_text(self, data, *args, **kwargs)

        patch(pathlib.Path, "write_text", path_write_text)
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault, n, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: fault_child.py FAULT N -- <a2vgen arguments>"
    inject(fault, int(n))
    from a2vgen.cli import main

    main(args)
