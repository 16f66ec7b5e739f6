"""Class → generator-key maps for the three granularities (SPEC §2)."""

from __future__ import annotations

import difflib
import logging

log = logging.getLogger(__name__)

UNIFIED_KEY = "unified"
OTHER_GROUP = "other"


def unified_keys(classes: list[str]) -> dict[str, str]:
    """Every class trains the single generator ``unified``."""
    return dict.fromkeys(classes, UNIFIED_KEY)


def per_class_keys(classes: list[str]) -> dict[str, str]:
    """Every class trains its own generator, keyed by the class name."""
    return {c: c for c in classes}


def per_group_keys(classes: list[str], groups: dict[str, list[str]], strict: bool = False) -> dict[str, str]:
    """A class trains the generator of the group listing it; unlisted classes go to ``other``.

    Raises ``ValueError`` for a class listed in two groups, for a group named ``other`` that clashes
    with the fallback, (``strict``) for unlisted classes, and for a listed name that is no class while a
    class is unlisted (a typo, e.g. ``dgo``); listed names that are no class otherwise only warn.
    """
    owner: dict[str, str] = {}
    for group, members in groups.items():
        for c in members:
            if c in owner:
                raise ValueError(f"class {c!r} is listed in two groups: {owner[c]!r} and {group!r}")
            owner[c] = group
    unlisted = [c for c in classes if c not in owner]
    unknown = [(group, c) for c, group in owner.items() if c not in classes]
    if unknown and unlisted:
        group, name = unknown[0]
        close = difflib.get_close_matches(name, unlisted, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"class_groups[{group!r}] lists {name!r}, which is not a class of the data; {hint}"
            f"classes in no group: {unlisted}"
        )
    if unknown:
        log.warning("class_groups lists names that are not classes of the data: %s", [c for _, c in unknown])
    if unlisted:
        if strict:
            raise ValueError(
                f"classes {unlisted} are in no group of class_groups (groups: {sorted(groups)}); "
                "add them to a group or set strict_groups: false to put them in 'other'"
            )
        if OTHER_GROUP in groups:
            raise ValueError(f"classes {unlisted} are in no group, and a listed group is already named 'other'")
        log.warning("classes %s are in no group of class_groups: they train the group %r", unlisted, OTHER_GROUP)
    return {c: owner.get(c, OTHER_GROUP) for c in classes}
