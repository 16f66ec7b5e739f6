"""Audio I/O: resampling against an analytic reference, mono mixdown, pad/trim, token pooling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from a2vgen.encoders.audio import AudioReadError, load_audio, pad_or_trim, pool_tokens, resample, to_mono


def tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


def test_resample_matches_analytic_tone() -> None:
    out = resample(tone(440.0, 44100), 44100, 16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    inner = slice(400, -400)  # the polyphase filter has edge transients
    np.testing.assert_allclose(out[inner], tone(440.0, 16000)[inner], atol=2e-3)


def test_resample_removes_content_above_new_nyquist() -> None:
    out = resample(tone(10000.0, 44100), 44100, 16000)  # 10 kHz > 8 kHz Nyquist: must not alias
    assert np.abs(out[400:-400]).max() < 0.02


def test_load_audio_mixes_down_and_resamples(tmp_path) -> None:
    left = tone(440.0, 44100)
    sf.write(tmp_path / "s.wav", np.stack([left, -0.5 * left], axis=1), 44100, subtype="FLOAT")
    wave = load_audio(tmp_path / "s.wav", seconds=None)
    assert wave.shape == (16000,)
    np.testing.assert_allclose(wave[400:-400], 0.25 * tone(440.0, 16000)[400:-400], atol=2e-3)
    np.testing.assert_allclose(to_mono(np.stack([left, -0.5 * left], axis=1)), 0.25 * left, atol=1e-7)


def test_load_audio_pads_and_trims(tmp_path) -> None:
    sf.write(tmp_path / "a.wav", tone(300.0, 16000), 16000, subtype="FLOAT")
    padded = load_audio(tmp_path / "a.wav", seconds=5.0)
    assert padded.shape == (80000,)
    assert np.all(padded[16000:] == 0) and np.abs(padded[:16000]).max() > 0.9
    assert load_audio(tmp_path / "a.wav", seconds=0.5).shape == (8000,)
    np.testing.assert_array_equal(pad_or_trim(np.ones(3, np.float32), 5), [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(pad_or_trim(np.arange(5.0), 2), [0, 1])


def test_load_audio_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(AudioReadError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....not a wav")
    with pytest.raises(AudioReadError, match="bad.wav"):
        load_audio(tmp_path / "bad.wav")


def test_pool_tokens_averages_consecutive_tokens() -> None:
    hidden = torch.arange(12.0).reshape(1, 12, 1).expand(2, 12, 3)
    pooled = pool_tokens(hidden, 4)
    assert pooled.shape == (2, 4, 3)
    torch.testing.assert_close(pooled[0, :, 0], torch.tensor([1.0, 4.0, 7.0, 10.0]))
    assert pool_tokens(hidden, None) is hidden
    with pytest.raises(ValueError, match="tokens"):
        pool_tokens(hidden, 0)
