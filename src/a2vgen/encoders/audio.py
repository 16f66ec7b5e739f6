"""Audio loading (soundfile + scipy, no torchaudio) and AST token embeddings via ``transformers``."""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_AST = "MIT/ast-finetuned-audioset-10-10-0.4593"


class AudioReadError(ValueError):
    """An audio file is missing, unreadable or empty; the message names the file."""


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average the channels of a ``[frames]`` or ``[frames, channels]`` array (soundfile layout)."""
    wave = np.asarray(wave, dtype=np.float32)
    return wave.mean(axis=1) if wave.ndim == 2 else wave


def resample(wave: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a mono signal from ``orig_rate`` to ``target_rate``."""
    if orig_rate == target_rate:
        return np.asarray(wave, dtype=np.float32)
    g = gcd(int(orig_rate), int(target_rate))
    return resample_poly(wave, target_rate // g, orig_rate // g).astype(np.float32)


def pad_or_trim(wave: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end or cut ``wave`` to exactly ``length`` samples."""
    if len(wave) >= length:
        return wave[:length]
    return np.pad(wave, (0, length - len(wave)))


def wav_frames(path: Path) -> tuple[int, int] | None:
    """``(frames in the header, frames in the file)`` of a RIFF/WAVE file (``None``: not a plain WAV)."""
    with open(path, "rb") as file:
        head = file.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block = 0
        while chunk := file.read(8):
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = file.read(size + size % 2)
                block = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else 0
            elif name == b"data":
                if not block or size == 0xFFFFFFFF:  # no format yet, or a streamed file of unknown length
                    return None
                available = path.stat().st_size - file.tell()
                return size // block, min(size, available) // block
            else:
                file.seek(size + size % 2, 1)
    return None


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, seconds: float | None = 5.0) -> np.ndarray:
    """Read ``path`` as mono float32 at ``sample_rate``, padded/trimmed to ``seconds`` (None: keep).

    A WAV file holding fewer frames than its header declares (a truncated copy) is an error; a clip
    shorter than ``seconds`` is padded with silence, with a warning naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"audio file not found: {path}")
    frames = wav_frames(path)
    if frames is not None and frames[1] < frames[0]:
        raise AudioReadError(
            f"audio file {path} is truncated: its header declares {frames[0]} frames, the file holds {frames[1]}; "
            "copy it again or remove it from the dataset"
        )
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioReadError(f"cannot read audio file {path}: {err}") from err
    if wave.shape[0] == 0:
        raise AudioReadError(f"audio file {path} has no samples")
    if seconds is not None and len(wave) < round(seconds * rate):
        log.warning("audio file %s holds %.2f s, less than clip_seconds=%g: padded with silence",
                    path, len(wave) / rate, seconds)  # fmt: skip
    wave = resample(to_mono(wave), rate, sample_rate)
    return wave if seconds is None else pad_or_trim(wave, round(seconds * sample_rate))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else goes to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pool_tokens(hidden: torch.Tensor, tokens: int | None) -> torch.Tensor:
    """Adaptive average pooling of ``[B, T, D]`` over the token axis to ``[B, tokens, D]`` (None: keep T)."""
    if tokens is None:
        return hidden
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1 or None, got {tokens}")
    return F.adaptive_avg_pool1d(hidden.transpose(1, 2), tokens).transpose(1, 2)


class ASTEmbedder:
    """AST ``last_hidden_state`` of 16 kHz mono clips, pooled to ``tokens`` tokens per clip.

    Args:
        model: hub id or local folder holding the AST weights and its ``preprocessor_config.json``.
        tokens: tokens ``L`` kept per clip by adaptive average pooling; None keeps the full sequence.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        batch_size: clips per forward pass.
    """

    def __init__(
        self, model: str = DEFAULT_AST, tokens: int | None = 4, device: str = "auto", batch_size: int = 8
    ) -> None:
        from transformers import ASTFeatureExtractor, ASTModel

        self.model_id = str(model)
        self.tokens = tokens
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.extractor = ASTFeatureExtractor.from_pretrained(self.model_id)
        self.model = ASTModel.from_pretrained(self.model_id).eval().to(self.device)
        config = self.model.config
        if (self.extractor.max_length, self.extractor.num_mel_bins) != (
            config.max_length,
            config.num_mel_bins,
        ):
            raise ValueError(
                f"{self.model_id}: feature extractor (max_length={self.extractor.max_length}, "
                f"num_mel_bins={self.extractor.num_mel_bins}) does not match the model config "
                f"(max_length={config.max_length}, num_mel_bins={config.num_mel_bins})"
            )

    @property
    def sample_rate(self) -> int:
        return int(self.extractor.sampling_rate)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def features(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """The feature extractor's ``input_values`` of mono clips at :attr:`sample_rate` (CPU work)."""
        batch = [np.asarray(w, dtype=np.float32) for w in waves]
        return self.extractor(batch, sampling_rate=self.sample_rate, return_tensors="pt")["input_values"]

    @torch.inference_mode()
    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Pooled ``last_hidden_state`` of one batch of :meth:`features`: ``[N, L, D]`` float32 on the CPU."""
        hidden = self.model(input_values=values.to(self.device, self.model.dtype)).last_hidden_state
        return pool_tokens(hidden, self.tokens).float().cpu()

    def __call__(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """Embed mono clips at :attr:`sample_rate`: ``[N, L, D]`` float32 on the CPU."""
        out = [
            self.forward(self.features(waves[i : i + self.batch_size])) for i in range(0, len(waves), self.batch_size)
        ]
        if not out:
            return torch.empty(0, self.tokens or 0, self.dim)
        return torch.cat(out)
