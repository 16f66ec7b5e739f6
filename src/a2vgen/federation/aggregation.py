"""Aggregation of independently trained generators (and adapters) at round end."""

from __future__ import annotations

import torch
from torch import nn

from a2vgen.modules.bank import GeneratorBank


def _float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and floating-point buffers (e.g. a calibrated decoder variance), by name."""
    return {name: t for name, t in module.state_dict(keep_vars=True).items() if t.is_floating_point()}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same elements in memory (copying one onto the other changes nothing)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


@torch.no_grad()
def weighted_average(sources: list[tuple[nn.Module, float]], targets: list[nn.Module]) -> None:
    """Write the ``weight``-weighted average of the sources' parameters and floating-point buffers into
    every target module (integer and boolean buffers, such as ages, are left alone).

    A submodule with ``average_state(sources)`` (e.g. :class:`~a2vgen.nn.calibration.SamplingCalibration`)
    averages itself: it gets the matching submodules of the sources with their weights and returns the
    state that every target's copy loads.
    """
    total = sum(n for _, n in sources)
    if total <= 0:
        return
    own = [name for name, m in sources[0][0].named_modules() if name and callable(getattr(m, "average_state", None))]
    averaged: dict[str, torch.Tensor] = {}
    for name in own:
        part = sources[0][0].get_submodule(name).average_state([(m.get_submodule(name), n) for m, n in sources])
        averaged.update({f"{name}.{key}": tensor for key, tensor in part.items()})
    states = [_float_state(module) for module, _ in sources]
    for name in states[0]:
        if any(name.startswith(f"{prefix}.") for prefix in own):
            continue
        if len(sources) == 1:  # the average of one is itself: no float64 round trip (it would be exact too)
            averaged[name] = states[0][name].detach()
        else:  # accumulated in float64, in place: no float64 copy of every source
            averaged[name] = torch.zeros_like(states[0][name], dtype=torch.float64)
            for state, (_, n) in zip(states, sources):
                averaged[name].add_(state[name].detach(), alpha=n / total)
    for module in targets:
        for name, t in module.state_dict(keep_vars=True).items():
            if name in averaged and not _same(averaged[name], t):  # a lone source's own tensors stay as they are
                t.copy_(averaged[name].to(t.dtype))


@torch.no_grad()
def fedavg(key: str, contributions: list[tuple[GeneratorBank, float]], holders: list[GeneratorBank]) -> None:
    """Sample-weighted average of generator ``key`` over ``contributions`` (bank, samples), written into
    every bank of ``holders``.

    Parameters are averaged; the seen-class records are united (the average learned from all of them).
    Ages and optimizer state (Adam moments and step counts) stay each holder's own.
    """
    weighted_average([(bank[key].net, n) for bank, n in contributions], [bank[key].net for bank in holders])
    for record in ("seen", "wiped"):
        united = torch.stack([getattr(bank[key], record) for bank, _ in contributions]).any(dim=0)
        for bank in holders:
            getattr(bank[key], record).copy_(united)
