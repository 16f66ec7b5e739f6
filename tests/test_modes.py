"""Generator-only mode never builds the diffusion pipeline; full mode loads it once, lazily."""

import diffusers
import pytest

from a2vgen.data.clients import ClientSpec
from a2vgen.federation import PreviewPipeline
from a2vgen.modules import UnifiedGenerator
from conftest import module_for, small_datamodule, small_demo
from federation_helpers import federated_fit
from tiny_models import build_tiny_sd

CLIENTS = [ClientSpec("0", classes=["dog", "rain"]), ClientSpec("1", classes=["rooster"])]


def forbid(monkeypatch, *classes):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} must not be constructed in generator-only mode")

    for cls in classes:
        monkeypatch.setattr(cls, "__init__", refuse)


def test_generator_only_never_constructs_denoiser_or_image_vae(monkeypatch):
    forbid(monkeypatch, diffusers.UNet2DConditionModel, diffusers.FluxTransformer2DModel, diffusers.AutoencoderKL)
    dm = small_datamodule(CLIENTS)
    trainer = federated_fit(module_for(UnifiedGenerator, dm), dm, max_rounds=2, generator_only=True)
    assert not trainer.server.loaded
    with pytest.raises(RuntimeError, match="generator-only mode never loads"):
        trainer.server.pipeline()


def test_full_mode_loads_the_pipeline_once_lazily(tmp_path, monkeypatch):
    path = build_tiny_sd(tmp_path / "sd")
    calls = []
    original = diffusers.DiffusionPipeline.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", classmethod(counting))
    dm = small_datamodule(CLIENTS, source=small_demo(cond_tokens=77, cond_dim=32))  # tiny SD's CLIP states
    server_before_fit = PreviewPipeline(generator_only=False, pipeline_path=str(path))
    assert not server_before_fit.loaded and calls == []  # constructing the server loads nothing
    trainer = federated_fit(
        module_for(UnifiedGenerator, dm), dm, max_rounds=2, generator_only=False, pipeline=str(path)
    )
    assert calls == [str(path)]
    assert isinstance(trainer.server.pipeline(), diffusers.StableDiffusionPipeline)
    assert calls == [str(path)]


def test_full_mode_without_a_pipeline_is_an_error():
    with pytest.raises(ValueError, match="set trainer.pipeline"):
        PreviewPipeline(generator_only=False)


def test_full_mode_refuses_conditioning_from_another_prompt_space(tmp_path):
    path = build_tiny_sd(tmp_path / "sd")
    dm = small_datamodule(CLIENTS)  # conditioning [6, 8]: not the pipeline's CLIP width 32
    with pytest.raises(ValueError, match=r"conditioning widths \[8\].*prompt space.*\[32\]"):
        federated_fit(module_for(UnifiedGenerator, dm), dm, max_rounds=1, generator_only=False, pipeline=str(path))
