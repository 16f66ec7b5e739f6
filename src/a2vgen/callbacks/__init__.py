"""Callbacks: reset on class change, round checkpoints, exports, predicted samples."""

from a2vgen.callbacks.checkpoint import RoundCheckpoint
from a2vgen.callbacks.export import ExportGenerators
from a2vgen.callbacks.reset import ClassChangeResetCallback
from a2vgen.callbacks.samples import SampleWriter

__all__ = ["ClassChangeResetCallback", "ExportGenerators", "RoundCheckpoint", "SampleWriter"]
