"""The registry of trusted generator modules (LightningModules), for loading checkpoints.

Every :class:`~a2vgen.modules.base.BaseGeneratorModule` subclass registers itself under its qualified
name when its class is defined: code that runs is trusted; a name in a checkpoint is not.
"""

from __future__ import annotations

import importlib

from a2vgen.nn.registry import Registry

MODULES = Registry(
    "generator module",
    "a2vgen.modules",
    "import the file that defines it first (e.g. `a2vgen export --imports [my_generators] ...`), or declare it "
    "in the entry-point group 'a2vgen.modules' of an installed package",
)


def import_plugins(names: list[str]) -> None:
    """Import the modules a user named (e.g. on the command line) so that their types register."""
    for name in names:
        importlib.import_module(name)
