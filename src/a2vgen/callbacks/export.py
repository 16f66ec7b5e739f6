"""Deprecated: the old home of :class:`~a2vgen.callbacks.exports.ExportGenerators`, kept so that code and
configs naming ``a2vgen.callbacks.export.ExportGenerators`` keep working."""

import warnings

from a2vgen.callbacks.exports import ExportGenerators

__all__ = ["ExportGenerators"]

warnings.warn("a2vgen.callbacks.export is now a2vgen.callbacks.exports", DeprecationWarning, stacklevel=2)
