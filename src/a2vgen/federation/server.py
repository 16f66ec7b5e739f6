"""The server's diffusion pipeline, loaded lazily and only outside generator-only mode."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class DiffusionServer:
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

    def pipeline(self):
        """The diffusers pipeline (loaded once)."""
        if self.generator_only:
            raise RuntimeError("generator-only mode never loads the diffusion pipeline")
        if self._pipeline is None:
            from diffusers import DiffusionPipeline

            log.info("loading diffusion pipeline %s", self.pipeline_path)
            self._pipeline = DiffusionPipeline.from_pretrained(self.pipeline_path, torch_dtype=self.dtype)
        return self._pipeline
