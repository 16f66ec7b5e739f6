"""Flow-matching generators (:class:`~a2vgen.nn.flow.ConditionalFlow`) at every granularity.

Built only through the public hooks (``build_network`` and ``compute_loss``): sharing, reset, FedAvg,
checkpoints, exports and sampling treat them like the VAE generators. Pick one in YAML with
``model.class_path: a2vgen.modules.FlowPerClassGenerator`` (see ``configs/flow.yaml``).
"""

from __future__ import annotations

import torch

from a2vgen.modules.granularity import PerClassGenerator, PerGroupGenerator, UnifiedGenerator
from a2vgen.nn.flow import ConditionalFlow


class FlowMatchingMixin:
    """Replaces the VAE by a conditional flow trained with the velocity MSE of rectified flow.

    Args:
        num_blocks: residual blocks of the velocity MLP (``hidden_dim`` wide, conditioned through a
            ``cond_width``-wide encoding of the text embedding).
        sample_steps: integration steps when sampling.
        solver: ``"euler"`` or ``"heun"``.
        **kwargs: see :class:`~a2vgen.modules.base.BaseGeneratorModule` (``latent_dim``, ``input_noise``
            and the VAE loss schedule do not apply).
    """

    def __init__(self, *args, num_blocks: int = 3, sample_steps: int = 32, solver: str = "heun", **kwargs) -> None:
        self.num_blocks, self.sample_steps, self.solver = num_blocks, sample_steps, solver
        super().__init__(*args, **kwargs)

    def build_network(self, key: str) -> ConditionalFlow:
        hp = self.hparams
        return ConditionalFlow(
            self.audio_shape,
            self.cond_shapes,
            hidden_dim=hp.hidden_dim,
            num_blocks=self.num_blocks,
            cond_width=hp.cond_width,
            steps=self.sample_steps,
            solver=self.solver,
        )

    def compute_loss(
        self,
        net: ConditionalFlow,
        audio: torch.Tensor,
        cond: list[torch.Tensor],
        age: torch.Tensor,
        cond_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return net.loss(audio, cond or None, cond_index)


class FlowUnifiedGenerator(FlowMatchingMixin, UnifiedGenerator):
    """One flow-matching generator, ``unified``, for every class."""


class FlowPerClassGenerator(FlowMatchingMixin, PerClassGenerator):
    """One flow-matching generator per class."""


class FlowPerGroupGenerator(FlowMatchingMixin, PerGroupGenerator):
    """One flow-matching generator per group of classes (see :class:`~a2vgen.modules.PerGroupGenerator`)."""
