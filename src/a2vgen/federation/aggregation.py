"""Aggregation of independently trained generators at round end."""

from __future__ import annotations

import torch

from a2vgen.modules.bank import GeneratorBank


@torch.no_grad()
def fedavg(key: str, contributions: list[tuple[GeneratorBank, float]], holders: list[GeneratorBank]) -> None:
    """Sample-weighted average of generator ``key`` over ``contributions`` (bank, samples), written into
    every bank of ``holders``.

    Parameters are averaged; the seen-class records are united (the average learned from all of them).
    Ages and optimizer state (Adam moments and step counts) stay each holder's own.
    """
    total = sum(n for _, n in contributions)
    if total <= 0:
        return
    params = [dict(bank[key].net.named_parameters()) for bank, _ in contributions]
    averaged = {
        name: sum(p[name].detach().double() * (n / total) for p, (_, n) in zip(params, contributions))
        for name in params[0]
    }
    seen = torch.stack([bank[key].seen for bank, _ in contributions]).any(dim=0)
    for bank in holders:
        slot = bank[key]
        for name, p in slot.net.named_parameters():
            p.copy_(averaged[name].to(p.dtype))
        slot.seen.copy_(seen)
