import logging

import pytest

from a2vgen.modules import PerClassGenerator, PerGroupGenerator, UnifiedGenerator
from a2vgen.modules.keymap import per_group_keys
from conftest import small_module

CLASSES = ["dog", "rooster", "rain", "train"]


@pytest.mark.parametrize(
    ("cls", "kwargs", "expected"),
    [
        (
            UnifiedGenerator,
            {},
            {"dog": "unified", "rooster": "unified", "rain": "unified", "train": "unified"},
        ),
        (PerClassGenerator, {}, {"dog": "dog", "rooster": "rooster", "rain": "rain", "train": "train"}),
        (
            PerGroupGenerator,
            {"class_groups": {"animals": ["dog", "rooster"], "weather": ["rain"]}},
            {"dog": "animals", "rooster": "animals", "rain": "weather", "train": "other"},
        ),
    ],
)
def test_class_to_key_table(cls, kwargs, expected):
    module = small_module(cls, CLASSES, **kwargs)
    assert {c: module.generator_key(c) for c in CLASSES} == expected
    assert module.generator_keys == list(dict.fromkeys(expected.values()))
    assert len(module.bank.slots) == len(set(expected.values()))


def test_unlisted_class_goes_to_other_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        keys = per_group_keys(CLASSES, {"animals": ["dog", "rooster"]})
    assert keys["rain"] == "other" and keys["train"] == "other"
    assert "['rain', 'train']" in caplog.text


def test_strict_groups_refuse_unlisted_classes():
    with pytest.raises(ValueError, match=r"\['rain', 'train'\] are in no group"):
        small_module(PerGroupGenerator, CLASSES, class_groups={"animals": ["dog", "rooster"]}, strict_groups=True)


def test_class_in_two_groups_is_an_error():
    with pytest.raises(ValueError, match="'dog' is listed in two groups"):
        per_group_keys(CLASSES, {"a": ["dog"], "b": ["dog"]})


def test_unknown_class_names_the_available_ones():
    module = small_module(PerClassGenerator, CLASSES)
    with pytest.raises(KeyError, match=r"unknown class 'cat'; available classes: \['dog', 'rooster'"):
        module.generator_key("cat")
