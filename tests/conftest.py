"""Shared fixtures: tiny dimensions so that every test trains real modules in milliseconds."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

from a2vgen.data.datamodule import FederatedDataModule  # noqa: E402
from a2vgen.data.sources import DemoEmbeddings  # noqa: E402

SMALL = {"hidden_dim": 32, "latent_dim": 8, "cond_width": 8}
AUDIO_SHAPE = [4, 16]
COND_SHAPES = [[6, 8]]


@pytest.fixture(autouse=True)
def _quiet_lightning(caplog):
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    caplog.set_level(logging.INFO, logger="a2vgen")


def small_module(cls, classes, **kwargs):
    """A module of ``cls`` with tiny networks for ``classes`` (audio [4, 16], conditioning [6, 8])."""
    options = {"audio_shape": AUDIO_SHAPE, "cond_shapes": COND_SHAPES, **SMALL, **kwargs}
    return cls(classes=classes, **options)


def small_demo(
    train_per_class: int = 12, num_classes: int = 10, cond_tokens: int = 6, cond_dim: int = 8
) -> DemoEmbeddings:
    return DemoEmbeddings(
        num_classes=num_classes,
        train_per_class=train_per_class,
        val_per_class=4,
        test_per_class=4,
        tokens=4,
        audio_dim=16,
        cond_tokens=cond_tokens,
        cond_dim=cond_dim,
    )


def small_datamodule(clients, batch_size: int = 8, **kwargs) -> FederatedDataModule:
    return FederatedDataModule(
        clients=clients, source=kwargs.pop("source", small_demo()), batch_size=batch_size, **kwargs
    )


def module_for(cls, dm: FederatedDataModule, **kwargs):
    shapes = {"audio_shape": dm.audio_shape, "cond_shapes": dm.cond_shapes}
    return small_module(cls, dm.classes, class_cond=dm.class_cond, **shapes, **kwargs)


def make_batch(class_idx: list[int], seed: int = 0, scale: float = 3.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = len(class_idx)
    return {
        "audio": torch.randn(n, *AUDIO_SHAPE, generator=g) * scale,
        "cond": [torch.randn(n, *COND_SHAPES[0], generator=g)],
        "class_idx": torch.tensor(class_idx),
        "index": torch.arange(n),
    }
