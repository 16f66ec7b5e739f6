"""LightningModules that own and train keyed generators."""

from a2vgen.modules.bank import GeneratorBank, GeneratorSlot
from a2vgen.modules.base import BaseGeneratorModule, CheckpointMismatchError
from a2vgen.modules.flow import FlowMatchingMixin, FlowPerClassGenerator, FlowPerGroupGenerator, FlowUnifiedGenerator
from a2vgen.modules.granularity import PerClassGenerator, PerGroupGenerator, UnifiedGenerator
from a2vgen.modules.registry import MODULES
from a2vgen.seeding import key_seed

__all__ = [
    "MODULES",
    "BaseGeneratorModule",
    "CheckpointMismatchError",
    "FlowMatchingMixin",
    "FlowPerClassGenerator",
    "FlowPerGroupGenerator",
    "FlowUnifiedGenerator",
    "GeneratorBank",
    "GeneratorSlot",
    "PerClassGenerator",
    "PerGroupGenerator",
    "UnifiedGenerator",
    "key_seed",
]
