"""Console output of the command-line tools and Flower apps: the ``a2vgen`` logger on standard error."""

from __future__ import annotations

import logging
import sys
from typing import TextIO


class StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record comes, not the stream it was made
    with: a notebook, a test runner or a wrapping tool may replace (and close) that stream, and a handler
    made once per process would then fail on every record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # ``StreamHandler.__init__`` sets it; the property decides
        pass


def log_to_stderr() -> None:
    """Send the ``a2vgen`` logger's INFO records to standard error as ``[a2vgen] message``, unless it has a
    handler already (this one, from an earlier call, or the user's own)."""
    logger = logging.getLogger("a2vgen")
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("[a2vgen] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
