"""Callbacks: reset on class change, round checkpoints, exports."""

from a2vgen.callbacks.checkpoint import RoundCheckpoint
from a2vgen.callbacks.export import ExportGenerators
from a2vgen.callbacks.reset import ClassChangeResetCallback

__all__ = ["ClassChangeResetCallback", "ExportGenerators", "RoundCheckpoint"]
