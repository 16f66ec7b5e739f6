"""Aggregation of independently trained generators (and adapters) at round end."""

from __future__ import annotations

import torch
from torch import nn

from a2vgen.modules.bank import GeneratorBank


@torch.no_grad()
def weighted_average(sources: list[tuple[nn.Module, float]], targets: list[nn.Module]) -> None:
    """Write the ``weight``-weighted average of the sources' parameters into every target module."""
    total = sum(n for _, n in sources)
    if total <= 0:
        return
    params = [dict(module.named_parameters()) for module, _ in sources]
    averaged = {
        name: sum(p[name].detach().double() * (n / total) for p, (_, n) in zip(params, sources)) for name in params[0]
    }
    for module in targets:
        for name, p in module.named_parameters():
            p.copy_(averaged[name].to(p.dtype))


@torch.no_grad()
def fedavg(key: str, contributions: list[tuple[GeneratorBank, float]], holders: list[GeneratorBank]) -> None:
    """Sample-weighted average of generator ``key`` over ``contributions`` (bank, samples), written into
    every bank of ``holders``.

    Parameters are averaged; the seen-class records are united (the average learned from all of them).
    Ages and optimizer state (Adam moments and step counts) stay each holder's own.
    """
    weighted_average([(bank[key].net, n) for bank, n in contributions], [bank[key].net for bank in holders])
    seen = torch.stack([bank[key].seen for bank, _ in contributions]).any(dim=0)
    for bank in holders:
        bank[key].seen.copy_(seen)
