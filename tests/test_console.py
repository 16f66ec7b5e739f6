"""Console output: the ``a2vgen`` logger's handler follows ``sys.stderr`` when it is replaced."""

import io
import logging
import sys

from a2vgen.console import StderrHandler, log_to_stderr


def test_the_log_handler_writes_to_the_stderr_of_the_moment(monkeypatch):
    log_to_stderr()
    log_to_stderr()  # once per process
    assert sum(isinstance(h, StderrHandler) for h in logging.getLogger("a2vgen").handlers) == 1
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logging.getLogger("a2vgen.test").info("one")
    first.close()  # e.g. a notebook cell's or a test's stream, gone
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("a2vgen.test").info("two")
    assert second.getvalue() == "[a2vgen] two\n"
