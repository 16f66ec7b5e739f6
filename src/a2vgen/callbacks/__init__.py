"""Callbacks: reset on class change, round checkpoints."""

from a2vgen.callbacks.checkpoint import RoundCheckpoint
from a2vgen.callbacks.reset import ClassChangeResetCallback

__all__ = ["ClassChangeResetCallback", "RoundCheckpoint"]
