"""The three generator granularities of SPEC §2 as LightningModules."""

from __future__ import annotations

from a2vgen.modules.base import BaseGeneratorModule
from a2vgen.modules.keymap import per_class_keys, per_group_keys, unified_keys


class UnifiedGenerator(BaseGeneratorModule):
    """One conditional generator, ``unified``, for every class."""

    granularity = "unified"

    def configure_keys(self, classes: list[str]) -> dict[str, str]:
        return unified_keys(classes)


class PerClassGenerator(BaseGeneratorModule):
    """One generator per class, keyed by the class name."""

    granularity = "per_class"

    def configure_keys(self, classes: list[str]) -> dict[str, str]:
        return per_class_keys(classes)


class PerGroupGenerator(BaseGeneratorModule):
    """One generator per group of classes.

    Args:
        class_groups: group name → member classes. A class in no group trains the group ``other`` (with
            a warning), or is an error under ``strict_groups``.
        strict_groups: refuse classes that no group lists.
        **kwargs: see :class:`~a2vgen.modules.base.BaseGeneratorModule`.
    """

    granularity = "per_group"

    def __init__(
        self, *args, class_groups: dict[str, list[str]] | None = None, strict_groups: bool = False, **kwargs
    ) -> None:
        self.class_groups = {g: list(m) for g, m in (class_groups or {}).items()}
        self.strict_groups = strict_groups
        super().__init__(*args, **kwargs)

    def configure_keys(self, classes: list[str]) -> dict[str, str]:
        return per_group_keys(classes, self.class_groups, self.strict_groups)

    def checkpoint_metadata(self) -> dict:
        return {**super().checkpoint_metadata(), "class_groups": self.class_groups}
