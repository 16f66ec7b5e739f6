"""AST and text encoders through the real ``from_pretrained`` paths, on tiny models saved to disk."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"

import json

import numpy as np
import pytest
import torch

from a2vgen.encoders.audio import ASTEmbedder
from a2vgen.encoders.text import TextConditioner, class_prompt, detect_family, encode_prompt
from tiny_models import build_tiny_ast, build_tiny_flux, build_tiny_sd


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("models")
    return {
        "ast": build_tiny_ast(root / "ast"),
        "sd": build_tiny_sd(root / "sd"),
        "flux": build_tiny_flux(root / "flux"),
    }


@pytest.fixture
def no_denoiser(monkeypatch) -> None:
    """Make constructing any denoiser or image VAE an error."""
    import diffusers

    def forbidden(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} must not be constructed")

    for name in ("UNet2DConditionModel", "FluxTransformer2DModel", "AutoencoderKL"):
        monkeypatch.setattr(getattr(diffusers, name), "__init__", forbidden)


def waves(n: int, seconds: float = 1.0) -> list[np.ndarray]:
    t = np.arange(int(16000 * seconds)) / 16000
    return [np.sin(2 * np.pi * (200 + 300 * i) * t).astype(np.float32) for i in range(n)]


def test_ast_embedder_pools_tokens(models) -> None:
    embedder = ASTEmbedder(str(models["ast"]), tokens=4, device="cpu", batch_size=2)
    out = embedder(waves(3))
    assert out.shape == (3, 4, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # different clips, different embeddings
    one_by_one = torch.cat([embedder(waves(3)[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=1e-4)


def test_ast_embedder_full_sequence(models) -> None:
    out = ASTEmbedder(str(models["ast"]), tokens=None, device="cpu")(waves(2))
    assert out.shape == (2, 12, 64)  # CLS + distillation + 2x5 patches for 32 mel bins x 64 frames


def test_ast_extractor_must_match_model(tmp_path) -> None:
    from transformers import ASTFeatureExtractor

    folder = build_tiny_ast(tmp_path / "ast")
    ASTFeatureExtractor(num_mel_bins=32, max_length=128).save_pretrained(folder)
    with pytest.raises(ValueError, match="max_length=128"):
        ASTEmbedder(str(folder), device="cpu")


def test_sd_conditioning(models, no_denoiser) -> None:
    assert detect_family(str(models["sd"])) == "sd"
    encoder = TextConditioner(str(models["sd"]), device="cpu")
    cond = encoder.encode_classes(["dog", "crying_baby", "rooster"], batch_size=2)
    assert [list(c.shape) for c in cond] == [[3, 77, 32]]
    torch.testing.assert_close(cond[0][1], encoder.encode(["a photo of a crying baby"])[0][0])
    assert not torch.allclose(cond[0][0], cond[0][2])


def test_flux_conditioning(models, no_denoiser) -> None:
    encoder = TextConditioner(str(models["flux"]), device="cpu", max_sequence_length=16)
    assert encoder.family == "flux"
    states, pooled = encoder.encode_classes(["dog", "rooster"])
    assert states.shape == (2, 16, 32) and pooled.shape == (2, 32)
    single = encode_prompt("a photo of a rooster", str(models["flux"]), device="cpu", max_sequence_length=16)
    torch.testing.assert_close(single[0], states[1])
    torch.testing.assert_close(single[1], pooled[1])


def test_conditioning_matches_diffusers_encode_prompt(models) -> None:
    from diffusers import FluxPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(models["sd"])
    ours = TextConditioner(str(models["sd"]), device="cpu").encode(["a photo of a dog"])
    torch.testing.assert_close(ours[0], sd.encode_prompt("a photo of a dog", "cpu", 1, False)[0])
    flux = FluxPipeline.from_pretrained(models["flux"])
    states, pooled, _ = flux.encode_prompt("a photo of a dog", max_sequence_length=16)
    ours = TextConditioner(str(models["flux"]), "flux", device="cpu", max_sequence_length=16).encode(
        ["a photo of a dog"]
    )
    torch.testing.assert_close(ours[0], states)
    torch.testing.assert_close(ours[1], pooled)


def test_tiny_pipelines_generate(models) -> None:
    from diffusers import FluxPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(models["sd"])
    image = sd("a dog", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    flux = FluxPipeline.from_pretrained(models["flux"])
    image = flux("a dog", num_inference_steps=2, height=32, width=32, max_sequence_length=8, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_prompt_template_and_family_errors(tmp_path) -> None:
    assert class_prompt("crying_baby") == "a photo of a crying baby"
    assert class_prompt("dog", "the sound of a {class}, photo") == "the sound of a dog, photo"
    with pytest.raises(ValueError, match="placeholder"):
        class_prompt("dog", "a photo")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline"):
        detect_family(str(tmp_path))
