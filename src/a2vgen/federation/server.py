"""The server's diffusion pipeline, loaded lazily and only outside generator-only mode.

:class:`PreviewPipeline` was called ``DiffusionServer``: that name still imports (with
a ``DeprecationWarning``), so code and configs naming it keep working.
"""

from __future__ import annotations

import logging
import warnings

import torch

log = logging.getLogger(__name__)


class PreviewPipeline:
    """Holds the diffusers pipeline used to render previews (SPEC §3.3).

    In generator-only mode nothing is loaded: no denoiser, no image VAE. Otherwise :meth:`pipeline`
    loads ``pipeline_path`` (a model id or a local folder) with ``from_pretrained`` on first use.
    """

    def __init__(self, generator_only: bool = True, pipeline_path: str | None = None, dtype: str = "float32") -> None:
        if not generator_only and not pipeline_path:
            raise ValueError("generator_only is false: set trainer.pipeline to a diffusers model id or folder")
        self.generator_only = generator_only
        self.pipeline_path = pipeline_path
        self.dtype = getattr(torch, dtype)
        self._pipeline = None

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def pipeline(self, device: torch.device | str | None = None):
        """The diffusers pipeline (loaded once, moved to ``device`` when given)."""
        if self.generator_only:
            raise RuntimeError("generator-only mode never loads the diffusion pipeline")
        if self._pipeline is None:
            from diffusers import DiffusionPipeline

            log.info("loading diffusion pipeline %s", self.pipeline_path)
            self._pipeline = DiffusionPipeline.from_pretrained(self.pipeline_path, torch_dtype=self.dtype)
            self._pipeline.set_progress_bar_config(disable=True)
        if device is not None:
            self._pipeline.to(device)
        return self._pipeline

    def check_prompt_space(self, cond_shapes: list[list[int]]) -> None:
        """Refuse conditioning whose widths differ from the pipeline's text encoders (SD: CLIP states;
        FLUX: T5 states and pooled CLIP): previews would feed the pipeline embeddings it cannot read."""
        pipe = self.pipeline()
        if getattr(pipe, "text_encoder_2", None) is not None:
            expected = [pipe.text_encoder_2.config.d_model, pipe.text_encoder.config.hidden_size]
        else:
            expected = [pipe.text_encoder.config.hidden_size]
        widths = [shape[-1] for shape in cond_shapes]
        if widths != expected:
            raise ValueError(
                f"the data's conditioning widths {widths} (shapes {cond_shapes}) differ from the prompt space of "
                f"{self.pipeline_path} {expected}: embed the class prompts with this pipeline's text encoders"
            )


def __getattr__(name: str) -> type:
    """``DiffusionServer``: the old name of :class:`PreviewPipeline`."""
    if name == "DiffusionServer":
        warnings.warn("DiffusionServer is now PreviewPipeline", DeprecationWarning, stacklevel=2)
        return PreviewPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
