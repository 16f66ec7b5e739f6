"""Image previews in full mode: generator samples → adapter → diffusion pipeline, per class."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from a2vgen.federation.view import federation_of, output_path
from a2vgen.seeding import key_seed

log = logging.getLogger(__name__)


def preview_seed(seed: int, round: int, class_name: str) -> int:
    """Seed of a class's preview samples in ``round`` (tests recompute the exact prompt embeddings)."""
    return key_seed(seed, f"preview/{round}/{class_name}")


def image_grid(rows: list[list[Image.Image]]) -> Image.Image:
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)))
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image, (x * width, y * height))
    return grid


class DiffusionPreviews(Callback):
    """Every ``k`` rounds, render a grid per class from synthetic samples through the pipeline.

    Each grid's first row shows images from the adapter's prompt embeddings of generator samples; with
    ``reference_row`` a second row renders the class's real text embedding. Grids go to
    ``<run dir>/previews/round-XXXX/<class>.png`` and to W&B when it is the logger. Generator-only runs
    skip previews (no pipeline is loaded).

    Args:
        every_n_rounds: render frequency (and after the final round).
        classes: classes to render (default: the first ``max_classes``).
        max_classes: how many classes when ``classes`` is not given.
        samples_per_class: images per row.
        height, width, num_inference_steps, guidance_scale: pipeline settings.
        reference_row: add a row rendered from the class's text embedding.
        seed: seed of the samples and of the pipeline's noise.
        dirpath: output folder (default ``<run dir>/previews``).
    """

    def __init__(
        self,
        every_n_rounds: int = 1,
        classes: list[str] | None = None,
        max_classes: int = 4,
        samples_per_class: int = 4,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        reference_row: bool = True,
        seed: int = 0,
        dirpath: str | None = None,
    ) -> None:
        self.every_n_rounds = every_n_rounds
        self.classes = classes
        self.max_classes = max_classes
        self.samples_per_class = samples_per_class
        self.settings = {
            "height": height,
            "width": width,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
        }
        self.reference_row = reference_row
        self.seed = seed
        self.dirpath = dirpath

    def render(self, pipeline, embeds: list[torch.Tensor], seed: int) -> list[Image.Image]:
        """Images of ``pipeline`` for prompt embeddings (SD: ``[states]``; FLUX: ``[T5 states, pooled]``)."""
        embeds = [e.to(pipeline.device, pipeline.dtype) for e in embeds]
        kwargs = dict(self.settings, generator=torch.Generator().manual_seed(seed), output_type="pil")
        if len(embeds) == 2:
            return pipeline(prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[1], **kwargs).images
        if self.settings["guidance_scale"] > 1.0:
            kwargs["negative_prompt_embeds"] = torch.zeros_like(embeds[0])
        return pipeline(prompt_embeds=embeds[0], **kwargs).images

    @torch.no_grad()
    def on_round_end(self, trainer, module, round: int) -> None:
        federation = federation_of(trainer)
        if federation.server.generator_only or not federation.config.due(round, self.every_n_rounds):
            return
        pipeline = federation.server.pipeline()
        out = output_path(trainer, self.dirpath, "previews") / f"round-{round:04d}"
        out.mkdir(parents=True, exist_ok=True)
        n = self.samples_per_class
        for name in self.classes or module.classes[: self.max_classes]:
            seed = preview_seed(self.seed, round, name)
            audio = module.sample(name, n, generator=torch.Generator(module.device).manual_seed(seed))
            rows = [self.render(pipeline, module.adapt(audio), seed)]
            if self.reference_row:
                reference = [c.expand(n, *c.shape[1:]) for c in module.class_condition(name)]
                rows.append(self.render(pipeline, reference, seed))
            grid = image_grid(rows)
            grid.save(out / f"{name}.png")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"preview/{name}", images=[grid], step=federation.visits)
        log.info("round %d: previews in %s", round, out)
