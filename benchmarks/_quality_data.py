"""Held-out data for the quality benchmark: an ESC-50-layout folder of synthesized sounds, embedded.

Twelve sound classes of four kinds (tonal, noisy, impulsive, modulated). Every clip draws its own
parameters (pitch, rate, timing, loudness, noise colour), so a class has real within-class spread with
structure, as recorded sounds do. 8 clips per class and fold, folds 1–5 (ESC-50's 40 clips per class):
folds 1–3 train (24 clips), 4 val and 5 test. The folder is embedded with ``a2vgen embed`` through a
random-weight AST (hidden 768, so tokens are ``[4, 768]`` as with the real model) and a random-weight
CLIP text encoder (hidden 768, prompts ``a photo of a {class}``), both built from configs and saved to
disk, so the real ``from_pretrained`` paths run. Nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RATE = 22050
SECONDS = 1.0
CLIPS_PER_FOLD = 8
GROUPS = {
    "tonal": ["whistle", "church_bells", "engine"],
    "noisy": ["rain", "wind", "vacuum_cleaner"],
    "impulsive": ["clock_tick", "door_wood_knock", "dog"],
    "modulated": ["siren", "chirping_birds", "crickets"],
}
CLASSES = [c for members in GROUPS.values() for c in members]


def _t(n: int) -> np.ndarray:
    return np.arange(n) / RATE


def _lowpass(x: np.ndarray, alpha: float) -> np.ndarray:
    from scipy.signal import lfilter

    return lfilter([alpha], [1, alpha - 1], x)


def _decay(t: np.ndarray, start: float, tau: float) -> np.ndarray:
    return np.where(t >= start, np.exp(-(t - start) / tau), 0.0)


def _whistle(rng, t):
    f = rng.uniform(1100, 1900)
    vib = rng.uniform(0.002, 0.01) * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
    return np.sin(2 * np.pi * f * t * (1 + vib)) * rng.uniform(0.3, 0.7)


def _church_bells(rng, t):
    f0, out = rng.uniform(250, 520), np.zeros_like(t)
    for start in np.sort(rng.uniform(0, 0.6, rng.integers(1, 4))):
        for ratio, amp in ((1.0, 1.0), (2.4, 0.6), (3.9, 0.4), (5.4, 0.25)):
            out += amp * _decay(t, start, rng.uniform(0.2, 0.6)) * np.sin(2 * np.pi * f0 * ratio * t)
    return 0.25 * out


def _engine(rng, t):
    f0 = rng.uniform(35, 95)
    tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k ** rng.uniform(0.5, 1.5) for k in range(1, 12))
    return 0.15 * tone + rng.uniform(0.05, 0.2) * _lowpass(rng.standard_normal(t.shape), rng.uniform(0.02, 0.1))


def _rain(rng, t):
    out = rng.uniform(0.05, 0.2) * _lowpass(rng.standard_normal(t.shape), rng.uniform(0.3, 0.9))
    for start in rng.uniform(0, 1, rng.integers(20, 120)):
        out += rng.uniform(0.1, 0.5) * _decay(t, start, 0.002) * rng.standard_normal(t.shape)
    return out


def _wind(rng, t):
    gust = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * t + rng.uniform(0, 6))
    return rng.uniform(0.3, 1.2) * gust * _lowpass(rng.standard_normal(t.shape), rng.uniform(0.01, 0.06))


def _vacuum_cleaner(rng, t):
    hum = np.sin(2 * np.pi * rng.uniform(95, 130) * t)
    return 0.1 * hum + rng.uniform(0.1, 0.3) * _lowpass(rng.standard_normal(t.shape), rng.uniform(0.2, 0.5))


def _clock_tick(rng, t):
    out, period, phase = np.zeros_like(t), rng.uniform(0.2, 0.55), rng.uniform(0, 0.2)
    bright = rng.uniform(2000, 5000)
    for start in np.arange(phase, 1, period):
        out += _decay(t, start, 0.003) * np.sin(2 * np.pi * bright * t)
    return rng.uniform(0.3, 0.8) * out


def _door_wood_knock(rng, t):
    out, f = np.zeros_like(t), rng.uniform(90, 220)
    for start in np.cumsum(rng.uniform(0.08, 0.25, rng.integers(2, 5))):
        env = _decay(t, start, rng.uniform(0.02, 0.06))
        out += env * (np.sin(2 * np.pi * f * t) + 0.3 * rng.standard_normal(t.shape))
    return 0.5 * out


def _dog(rng, t):
    out, f0 = np.zeros_like(t), rng.uniform(350, 750)
    for start in np.sort(rng.uniform(0, 0.7, rng.integers(1, 4))):
        env = _decay(t, start, rng.uniform(0.04, 0.12)) * (t >= start)
        out += env * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return 0.3 * out


def _siren(rng, t):
    rate, depth, f0 = rng.uniform(0.5, 2.5), rng.uniform(150, 450), rng.uniform(600, 950)
    phase = 2 * np.pi * (f0 * t - depth / (2 * np.pi * rate) * np.cos(2 * np.pi * rate * t))
    return rng.uniform(0.3, 0.6) * np.sin(phase)


def _chirping_birds(rng, t):
    out = np.zeros_like(t)
    for start in rng.uniform(0, 0.9, rng.integers(3, 12)):
        f1, length = rng.uniform(2000, 3500), rng.uniform(0.03, 0.09)
        inside = (t >= start) & (t < start + length)
        sweep = f1 * (t - start) + rng.uniform(500, 2500) * (t - start) ** 2 / (2 * length)
        out += inside * np.sin(np.pi * (t - start) / length) * np.sin(2 * np.pi * sweep)
    return 0.3 * out


def _crickets(rng, t):
    pulse = (np.sin(2 * np.pi * rng.uniform(12, 35) * t) > rng.uniform(0.0, 0.6)).astype(float)
    return rng.uniform(0.1, 0.4) * pulse * np.sin(2 * np.pi * rng.uniform(3800, 5200) * t)


SYNTHS: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "whistle": _whistle,
    "church_bells": _church_bells,
    "engine": _engine,
    "rain": _rain,
    "wind": _wind,
    "vacuum_cleaner": _vacuum_cleaner,
    "clock_tick": _clock_tick,
    "door_wood_knock": _door_wood_knock,
    "dog": _dog,
    "siren": _siren,
    "chirping_birds": _chirping_birds,
    "crickets": _crickets,
}


def write_sound_folder(root: Path, seed: int = 7, clips_per_fold: int = CLIPS_PER_FOLD) -> Path:
    """Write the ESC-50-layout folder (``audio/*.wav``, ``meta/esc50.csv``) to ``root``."""
    from tiny_models import write_mini_esc50

    t = _t(int(RATE * SECONDS))

    def clip(category: str, target: int, fold: int, k: int) -> np.ndarray:
        rng = np.random.default_rng([seed, target, fold, k])
        wave = SYNTHS[category](rng, t) + 0.005 * rng.standard_normal(t.shape)
        return (wave / max(1.0, np.abs(wave).max() * 1.05)).astype(np.float32)

    return write_mini_esc50(root, CLASSES, clips_per_fold, seconds=SECONDS, make_clip=clip, rate=RATE)


def build_text_pipeline(path: Path, hidden_size: int = 768) -> Path:
    """A Stable-Diffusion-layout folder holding only a random CLIP text encoder and its tokenizer."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from tiny_models import _clip_tokenizer

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=8, max_position_embeddings=77,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=hidden_size,
    )  # fmt: skip
    CLIPTextModel(config).eval().save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "tokenizer")
    index = {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]}
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def build_quality_embeddings(workdir: Path, smoke: bool = False) -> Path:
    """Synthesize, build the tiny encoders and run ``a2vgen embed``; returns the embedding file.

    Reuses an existing file (the embed cache makes a rerun cheap anyway)."""
    out = workdir / ("sounds-smoke.safetensors" if smoke else "sounds.safetensors")
    if out.is_file():
        return out
    from a2vgen.cli import main
    from tiny_models import build_tiny_ast

    hidden = 32 if smoke else 768
    sounds = write_sound_folder(
        workdir / ("ESC-synth-smoke" if smoke else "ESC-synth"), clips_per_fold=2 if smoke else CLIPS_PER_FOLD
    )
    ast = workdir / f"ast-{hidden}"
    text = workdir / f"clip-{hidden}"
    if not ast.is_dir():
        build_tiny_ast(ast, hidden_size=hidden)
    if not text.is_dir():
        build_text_pipeline(text, hidden_size=hidden)
    main([
        "embed", "--embed.root", str(sounds), "--embed.output", str(out), "--embed.ast_model", str(ast),
        "--embed.text_pipeline", str(text), "--embed.cache_dir", str(workdir / "cache"),
        "--embed.clip_seconds", str(SECONDS), "--embed.progress", "false",
        "--embed.splits", "{train: [1, 2, 3], val: [4], test: [5]}",
    ])  # fmt: skip
    return out
