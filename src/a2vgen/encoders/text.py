"""Class-prompt conditioning from the text encoders of a diffusers pipeline (never its denoiser or VAE).

Stable Diffusion: CLIP ``last_hidden_state`` ``[77, D]`` (``cond.0``).
FLUX: T5 ``last_hidden_state`` ``[S, D_t5]`` (``cond.0``) and CLIP ``pooler_output`` ``[D]`` (``cond.1``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

from a2vgen.encoders.audio import resolve_device

Family = Literal["auto", "sd", "flux"]
TEMPLATE = "a photo of a {class}"
DEFAULT_PIPELINE = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def class_prompt(name: str, template: str = TEMPLATE) -> str:
    """Fill ``{class}`` in ``template`` with ``name`` (underscores become spaces)."""
    if "{class}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{class}}' placeholder")
    return template.replace("{class}", name.replace("_", " "))


def read_model_index(pipeline: str) -> dict:
    """The ``model_index.json`` of a local pipeline folder or a hub id (hub cache when offline)."""
    local = Path(pipeline) / "model_index.json"
    if local.is_file():
        return json.loads(local.read_text())
    if Path(pipeline).is_dir():
        raise FileNotFoundError(f"{pipeline} is a folder without model_index.json: not a diffusers pipeline")
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(pipeline, "model_index.json")).read_text())


def detect_family(pipeline: str) -> Literal["sd", "flux"]:
    """``"flux"`` or ``"sd"`` from the pipeline's ``_class_name``; other pipelines are rejected."""
    name = str(read_model_index(pipeline).get("_class_name", ""))
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("StableDiffusion") and "XL" not in name and "3" not in name:
        return "sd"
    raise ValueError(
        f"{pipeline}: unsupported pipeline class {name!r}; expected a StableDiffusion* or Flux* pipeline "
        "(or pass family='sd'/'flux' explicitly)"
    )


class TextConditioner:
    """Encodes prompts with the text encoders of the pipeline ``pipeline`` (hub id or local folder).

    Args:
        pipeline: diffusers pipeline id or folder with ``text_encoder``/``tokenizer`` subfolders
            (plus ``text_encoder_2``/``tokenizer_2`` for FLUX).
        family: ``"sd"``, ``"flux"`` or ``"auto"`` (read from ``model_index.json``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        max_sequence_length: T5 tokens per prompt (FLUX only).
    """

    def __init__(
        self,
        pipeline: str = DEFAULT_PIPELINE,
        family: Family = "auto",
        device: str = "auto",
        max_sequence_length: int = 512,
    ) -> None:
        from transformers import AutoTokenizer, CLIPTextModel

        self.pipeline = str(pipeline)
        self.family = detect_family(self.pipeline) if family == "auto" else family
        if self.family not in ("sd", "flux"):
            raise ValueError(f"unknown family {family!r}; expected 'auto', 'sd' or 'flux'")
        self.device = resolve_device(device)
        self.max_sequence_length = max_sequence_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.pipeline, subfolder="tokenizer")
        self.clip = CLIPTextModel.from_pretrained(self.pipeline, subfolder="text_encoder").eval().to(self.device)
        if self.family == "flux":
            from transformers import T5EncoderModel

            self.tokenizer_2 = AutoTokenizer.from_pretrained(self.pipeline, subfolder="tokenizer_2")
            self.t5 = T5EncoderModel.from_pretrained(self.pipeline, subfolder="text_encoder_2")
            self.t5 = self.t5.eval().to(self.device)

    def _clip_outputs(self, prompts: list[str]):
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device) if getattr(self.clip.config, "use_attention_mask", False) else None
        return self.clip(tokens.input_ids.to(self.device), attention_mask=mask)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Conditioning of each prompt in layout order.

        SD: ``[[P, 77, D]]``; FLUX: ``[[P, S, D_t5], [P, D]]``.
        """
        clip = self._clip_outputs(prompts)
        if self.family == "sd":
            return [clip.last_hidden_state.float().cpu()]
        tokens = self.tokenizer_2(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        )
        states = self.t5(tokens.input_ids.to(self.device)).last_hidden_state
        return [states.float().cpu(), clip.pooler_output.float().cpu()]

    def encode_classes(self, classes: list[str], template: str = TEMPLATE, batch_size: int = 16) -> list[torch.Tensor]:
        """Per-class conditioning ``[C, ...]`` (``cond.0``, optional ``cond.1``) of the class prompts."""
        prompts = [class_prompt(c, template) for c in classes]
        parts = [self.encode(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
        return [torch.cat(chunks) for chunks in zip(*parts)]


def encode_prompt(
    prompt: str, pipeline: str, family: Family = "auto", device: str = "auto", max_sequence_length: int = 512
) -> list[torch.Tensor]:
    """Conditioning of one free-text prompt, one tensor per layout entry without the batch axis."""
    encoder = TextConditioner(pipeline, family, device, max_sequence_length)
    return [t[0] for t in encoder.encode([prompt])]
