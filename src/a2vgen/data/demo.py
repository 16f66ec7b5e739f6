"""A built-in, deterministic demo data set shaped like AST embeddings of ESC-50-like classes.

It is not trivially easy (SPEC §3.6):
- values like real AST outputs: most within a few units, a handful of dimensions beyond ±10;
- each class's mean is a fixed nonlinear map of its conditioning, so a conditional generator has to
  learn the map rather than memorise a table;
- within-class variation is low-rank and correlated across tokens, plus isotropic noise.
"""

from __future__ import annotations

import torch

from a2vgen.data.embeddings import SPLITS, EmbeddingSet

DEMO_CLASSES = [
    "dog", "rooster", "rain", "sea_waves", "crackling_fire",
    "crying_baby", "clock_tick", "helicopter", "chainsaw", "church_bells",
]  # fmt: skip


def make_demo_embeddings(
    num_classes: int = 10,
    train_per_class: int = 96,
    val_per_class: int = 16,
    test_per_class: int = 16,
    tokens: int = 4,
    audio_dim: int = 768,
    cond_tokens: int = 77,
    cond_dim: int = 768,
    rank: int = 4,
    noise: float = 0.3,
    seed: int = 1234,
) -> EmbeddingSet:
    """Generate the demo set; the same arguments always give the same tensors."""
    g = torch.Generator().manual_seed(seed)
    classes = [DEMO_CLASSES[i] if i < len(DEMO_CLASSES) else f"class_{i}" for i in range(num_classes)]
    flat = tokens * audio_dim

    # CLIP-like conditioning: a shared positional pattern plus class-specific token states,
    # with a few large-magnitude channels as in real CLIP hidden states.
    positional = torch.randn(cond_tokens, cond_dim, generator=g) * 0.5
    cond = positional + torch.randn(num_classes, cond_tokens, cond_dim, generator=g)
    cond[..., torch.randperm(cond_dim, generator=g)[:3]] *= 8.0

    # Fixed nonlinear map conditioning → class mean, with AST-like per-dimension scales.
    w1 = torch.randn(cond_dim, 256, generator=g) / cond_dim**0.5
    w2 = torch.randn(256, flat, generator=g) / 256**0.5
    scale = torch.ones(flat)
    scale[torch.randperm(flat, generator=g)[: flat // 200]] = 6.0
    offset = torch.zeros(flat)
    offset[torch.randperm(flat, generator=g)[:4]] = 12.0
    pooled = torch.tanh(cond.mean(dim=1) * 2.0)
    means = (torch.tanh(pooled @ w1 * 2.0) @ w2) * 1.5 * scale + offset

    # Low-rank within-class variation: per-class factors shared across tokens with token weights.
    token_weights = 1.0 + 0.5 * torch.randn(num_classes, rank, tokens, 1, generator=g)
    factors = torch.randn(num_classes, rank, 1, audio_dim, generator=g) * 0.8
    loadings = (token_weights * factors).reshape(num_classes, rank, flat)

    per_split = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    audio, labels, split = [], [], []
    for name, count in per_split.items():
        for c in range(num_classes):
            coeff = torch.randn(count, rank, generator=g)
            x = means[c] + coeff @ loadings[c] + noise * torch.randn(count, flat, generator=g) * scale
            audio.append(x.reshape(count, tokens, audio_dim))
            labels.append(torch.full((count,), c, dtype=torch.long))
            split.append(torch.full((count,), SPLITS[name], dtype=torch.int8))
    return EmbeddingSet(
        audio=torch.cat(audio),
        labels=torch.cat(labels),
        classes=classes,
        cond=[cond],
        split=torch.cat(split),
        meta={"source": "a2vgen demo", "seed": str(seed)},
        origin="<demo>",
    )
