"""Bad input gets a clear error naming the file, key or class, never silently wrong training."""

import logging

import numpy as np
import pytest
import soundfile as sf

from a2vgen.data.esc50 import ESC50Error, check_wav
from a2vgen.encoders.audio import AudioReadError, load_audio
from a2vgen.modules.keymap import per_group_keys


def test_truncated_wav_is_an_error_naming_the_file_and_both_lengths(tmp_path):
    path = tmp_path / "1-100-A-0.wav"
    sf.write(path, np.zeros(16000 * 5, dtype="float32"), 16000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(
        AudioReadError, match=r"1-100-A-0.wav is truncated: its header declares 80000 frames, the file holds 26652"
    ):
        load_audio(path)
    with pytest.raises(ESC50Error, match="is truncated: header 80000 frames, file 26652"):
        check_wav(path)


def test_clip_shorter_than_clip_seconds_is_padded_with_a_warning(tmp_path, caplog):
    path = tmp_path / "short.wav"
    sf.write(path, np.ones((16000 * 2, 2), dtype="float32") * 0.1, 16000)
    with caplog.at_level(logging.WARNING):
        wave = load_audio(path, seconds=5.0)
    assert wave.shape == (80000,) and wave[40000:].max() == 0
    assert "short.wav holds 2.00 s, less than clip_seconds=5: padded with silence" in caplog.text


def test_class_groups_typo_is_an_error_with_a_suggestion():
    classes = ["dog", "rooster", "rain", "crackling_fire"]
    with pytest.raises(ValueError, match=r"class_groups\['nature'\] lists 'crakling_fire', which is not a class of "
                       r"the data; did you mean 'crackling_fire'\? classes in no group: \['crackling_fire'\]"):  # fmt: skip
        per_group_keys(classes, {"animals": ["dog", "rooster"], "nature": ["rain", "crakling_fire"]})


def test_group_members_beyond_the_data_only_warn_when_every_class_is_covered(caplog):
    keys = per_group_keys(["dog", "rain"], {"animals": ["dog", "cat"], "nature": ["rain"]})
    assert keys == {"dog": "animals", "rain": "nature"}
    assert "names that are not classes of the data: ['cat']" in caplog.text
