"""ESC-50 reader: class selection, fold-to-split mapping and errors that name the culprit."""

from __future__ import annotations

import pytest

from a2vgen.data.esc50 import ESC50Error, read_esc50
from tiny_models import write_mini_esc50


@pytest.fixture
def esc50(tmp_path):
    return write_mini_esc50(
        tmp_path / "esc50", ["dog", "rooster", "crying_baby"], clips_per_fold=2, folds=[1, 2, 3, 4, 5]
    )


def test_default_splits_follow_folds(esc50) -> None:
    clips, classes = read_esc50(esc50)
    assert classes == ["dog", "rooster", "crying_baby"]
    assert len(clips) == 30
    split_of = {c.fold: c.split for c in clips}
    assert split_of == {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}
    assert all(c.path.is_file() and c.path.name.startswith(f"{c.fold}-") for c in clips)


def test_class_selection_and_custom_folds(esc50) -> None:
    clips, classes = read_esc50(esc50, ["crying_baby", "dog"], {"train": [2, 5], "test": [1]})
    assert classes == ["crying_baby", "dog"]
    assert [c.category for c in clips] == ["crying_baby"] * 6 + ["dog"] * 6
    assert {c.fold for c in clips} == {1, 2, 5}
    assert {(c.fold, c.split) for c in clips} == {(1, "test"), (2, "train"), (5, "train")}
    assert clips == read_esc50(esc50, ["crying_baby", "dog"], {"train": [2, 5], "test": [1]})[0]


def test_unknown_class_names_it_and_lists_available(esc50) -> None:
    with pytest.raises(ESC50Error, match=r"\['cat'\].*available: \['dog', 'rooster', 'crying_baby'\]"):
        read_esc50(esc50, ["dog", "cat"])


def test_missing_and_corrupt_wavs_are_named(esc50) -> None:
    clips, _ = read_esc50(esc50)
    clips[3].path.unlink()
    with pytest.raises(ESC50Error, match=f"missing: .*{clips[3].path.name}"):
        read_esc50(esc50)
    clips[3].path.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(ESC50Error, match=f"corrupt ESC-50 wav .*{clips[3].path.name}"):
        read_esc50(esc50)
    assert len(read_esc50(esc50, ["rooster"])[0]) == 10  # other classes do not touch the bad file


def test_bad_layout_and_split_config(esc50, tmp_path) -> None:
    with pytest.raises(ESC50Error, match="esc50.csv"):
        read_esc50(tmp_path)
    with pytest.raises(ESC50Error, match="fold 4 is in both"):
        read_esc50(esc50, splits={"train": [1, 4], "val": [4]})
    with pytest.raises(ESC50Error, match="unknown split 'dev'"):
        read_esc50(esc50, splits={"dev": [1]})
