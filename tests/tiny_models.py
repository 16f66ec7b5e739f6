"""Tiny offline models and data for tests: diffusers pipelines, an AST model, a mini ESC-50.

Everything is built from configs (no download) and saved with ``save_pretrained`` so that tests
exercise the real ``from_pretrained`` loading paths. Each builder returns the directory it wrote.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tokenizers import pre_tokenizers

ESC50_RATE = 44100
_WORDS = ["a", "photo", "of", "the", "sound", "dog", "rooster", "rain", "crying", "baby", "sea", "waves"]


def _clip_tokenizer():
    """A byte-level BPE CLIP tokenizer whose vocab is the byte alphabet (no merges), plus specials."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _clip_text_model(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=32,
    )
    return CLIPTextModel(config).eval()


def _t5_tokenizer():
    """A Unigram T5 tokenizer over characters and a few whole words."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -1.0) for w in _WORDS]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789_-'.,"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config).eval()


def build_tiny_sd(path: str | Path) -> Path:
    """Save a tiny ``StableDiffusionPipeline`` (CLIP hidden size 32) to ``path``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=_clip_text_model(len(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return Path(path)


def build_tiny_flux(path: str | Path) -> Path:
    """Save a tiny ``FluxPipeline`` (T5 d_model 32, CLIP pooled 32) to ``path``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=1,
        layers_per_block=1,
        norm_num_groups=1,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=_clip_text_model(len(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(path)
    return Path(path)


def build_tiny_ast(path: str | Path, hidden_size: int = 64) -> Path:
    """Save a tiny AST model and a matching ``ASTFeatureExtractor`` (32 mel bins, 64 frames) to ``path``."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(0)
    config = ASTConfig(
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_length=64,
        num_mel_bins=32,
    )
    ASTModel(config).eval().save_pretrained(path)
    ASTFeatureExtractor(num_mel_bins=32, max_length=64).save_pretrained(path)
    return Path(path)


def class_tone(category: str, index: int, seconds: float = 1.0, rate: int = ESC50_RATE) -> np.ndarray:
    """A deterministic stereo clip whose pitch, noise level and envelope depend on the class."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(category))
    rng = np.random.default_rng(seed * 1000 + index)
    t = np.arange(int(seconds * rate)) / rate
    freq = 200.0 + (seed % 40) * 50.0 + 5.0 * index
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (1 + seed % 5) * t)
    tone = 0.4 * envelope * np.sin(2 * np.pi * freq * t)
    noise = (0.02 + 0.01 * (seed % 7)) * rng.standard_normal(t.shape)
    left = tone + noise
    return np.stack([left, 0.9 * left], axis=1).astype(np.float32)


def write_mini_esc50(
    root: str | Path,
    classes: Sequence[str] = ("dog", "rooster"),
    clips_per_fold: int = 1,
    folds: Sequence[int] = (1, 2, 3, 4, 5),
    seconds: float = 1.0,
    make_clip: Callable[[str, int, int, int], np.ndarray] | None = None,
    rate: int = ESC50_RATE,
) -> Path:
    """Write an ESC-50-layout data set (``audio/*.wav`` at ``rate``, ``meta/esc50.csv``) to ``root``.

    Clips come from ``make_clip(category, target, fold, k)`` (default: :func:`class_tone`)."""
    if make_clip is None:
        make_clip = lambda category, target, fold, k: class_tone(category, fold * 100 + k, seconds)  # noqa: E731
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    for target, category in enumerate(classes):
        for fold in folds:
            for k in range(clips_per_fold):
                name = f"{fold}-{target:03d}{k:03d}-A-{target}.wav"
                sf.write(root / "audio" / name, make_clip(category, target, fold, k), rate)
                rows.append([name, fold, target, category, "False", f"{target:03d}{k:03d}", "A"])
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return root
