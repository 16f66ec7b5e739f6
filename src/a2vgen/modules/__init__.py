"""LightningModules that own and train keyed generators."""

from a2vgen.modules.bank import GeneratorBank, GeneratorSlot
from a2vgen.modules.base import BaseGeneratorModule, CheckpointMismatchError, key_seed
from a2vgen.modules.granularity import PerClassGenerator, PerGroupGenerator, UnifiedGenerator

__all__ = [
    "BaseGeneratorModule",
    "CheckpointMismatchError",
    "GeneratorBank",
    "GeneratorSlot",
    "PerClassGenerator",
    "PerGroupGenerator",
    "UnifiedGenerator",
    "key_seed",
]
