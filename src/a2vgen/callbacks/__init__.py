"""Callbacks: reset on class change, round checkpoints, exports, predicted samples, previews,
evaluation."""

from a2vgen.callbacks.checkpoint import RoundCheckpoint
from a2vgen.callbacks.evaluation import GeneratorEvaluation
from a2vgen.callbacks.exports import ExportGenerators
from a2vgen.callbacks.previews import DiffusionPreviews
from a2vgen.callbacks.reset import ClassChangeResetCallback
from a2vgen.callbacks.samples import SampleWriter

__all__ = [
    "ClassChangeResetCallback",
    "DiffusionPreviews",
    "ExportGenerators",
    "GeneratorEvaluation",
    "RoundCheckpoint",
    "SampleWriter",
]
