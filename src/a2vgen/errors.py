"""Errors a user can fix (config, data, checkpoint, paths): the CLI prints them in one line, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for; the message says what, where and how to fix it."""
