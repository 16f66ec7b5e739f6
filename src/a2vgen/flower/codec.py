"""Generator banks and optimizer state to and from Flower records, by name.

A bank entry is named ``<key>/<name in the slot>`` (``__adapter__/<name>`` for the adapter), e.g.
``dog/net.decoder.0.weight``, ``dog/age``, ``dog/seen``; an optimizer entry adds the statistic:
``dog/net.decoder.0.weight/exp_avg``. Names (not positions) tie the two sides together, so a bank with
fewer keys (an independent client's) maps onto the server's. Everything that arrives is checked against
what the receiver expects (names, shapes, dtypes, finite values) before it touches any state.
"""

from __future__ import annotations

import math

import torch
from flwr.app import Array, ArrayRecord, MetricRecord

from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import ADAPTER_KEY

OPTIMIZER_STATS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class RejectedState(ValueError):
    """A received state does not fit the receiver's bank: nothing was loaded."""


def bank_tensors(bank: GeneratorBank) -> dict[str, torch.Tensor]:
    """Every persistent tensor of ``bank`` (weights, buffers such as ``age`` and ``seen``) by name."""
    out = {f"{key}/{name}": t for key, slot in bank.items() for name, t in slot.state_dict().items()}
    if bank.adapter is not None:
        out.update({f"{ADAPTER_KEY}/{name}": t for name, t in bank.adapter.state_dict().items()})
    return out


def bank_parameters(bank: GeneratorBank) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters of ``bank``, named as in :func:`bank_tensors`."""
    out = {f"{key}/{name}": p for key, slot in bank.items() for name, p in slot.named_parameters()}
    if bank.adapter is not None:
        out.update({f"{ADAPTER_KEY}/{name}": p for name, p in bank.adapter.named_parameters()})
    return out


def optimizer_tensors(bank: GeneratorBank, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state (Adam moments, step counts) of ``bank``'s parameters, by name."""
    out = {}
    for name, param in bank_parameters(bank).items():
        for stat, value in optimizer.state.get(param, {}).items():
            out[f"{name}/{stat}"] = value
    return out


@torch.no_grad()
def load_bank(bank: GeneratorBank, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checked ``tensors`` (see :func:`check_bank`) into ``bank`` in place."""
    for name, target in bank_tensors(bank).items():
        target.copy_(tensors[name])


def load_optimizer(bank: GeneratorBank, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the optimizer state of ``bank``'s parameters by checked ``tensors``; a parameter without
    entries gets no state (a fresh optimizer's, e.g. after a reset)."""
    fused = bool(optimizer.defaults.get("fused") or optimizer.defaults.get("capturable"))
    for name, param in bank_parameters(bank).items():
        state = {
            stat: tensors[f"{name}/{stat}"].to(param.device if stat != "step" or fused else "cpu")
            for stat in OPTIMIZER_STATS
            if f"{name}/{stat}" in tensors
        }
        if state:
            optimizer.state[param] = state
        else:
            optimizer.state.pop(param, None)


def to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    """An ``ArrayRecord`` of ``tensors`` (numpy serialisation: no pickling)."""
    record = ArrayRecord()
    for name, tensor in tensors.items():
        if tensor.dtype == torch.bfloat16:
            raise RejectedState(f"{name} is bfloat16, which Flower cannot carry: keep generator parameters float32")
        record[name] = Array.from_numpy_ndarray(tensor.detach().cpu().numpy())
    return record


def from_record(record: ArrayRecord, expected: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The tensors of ``record``, checked against ``expected`` (see :func:`check_tensors`)."""
    _check_names(record, expected, what)
    return check_tensors({name: torch.from_numpy(record[name].numpy()) for name in expected}, expected, what)


def check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """``tensors`` when their names, shapes and dtypes equal ``expected``'s and their values are finite.

    Raises :class:`RejectedState` naming the first problem (``what``: where the tensors came from).
    """
    _check_names(tensors, expected, what)
    for name, reference in expected.items():
        tensor = tensors[name]
        if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
            raise RejectedState(
                f"{what}: {name} is {list(tensor.shape)} {tensor.dtype}, expected {list(reference.shape)} {reference.dtype}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RejectedState(f"{what}: {name} holds NaN or Inf")
    return tensors


def _check_names(found, expected: dict, what: str) -> None:
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise RejectedState(
            f"{what}: missing {missing[:3]}, unexpected {unexpected[:3]} (expected {len(expected)} tensors)"
        )


def expected_optimizer(bank: GeneratorBank, record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The optimizer entries ``record`` may hold for ``bank``: any subset of parameters (a reset drops some),
    each with the statistics it names; moments shaped like their parameter, step counts scalar float32."""
    params = bank_parameters(bank)
    expected = {}
    for entry in record:
        name, _, stat = entry.rpartition("/")
        if name not in params or stat not in OPTIMIZER_STATS:
            raise RejectedState(f"optimizer state: unexpected entry {entry}")
        p = params[name]
        expected[entry] = torch.empty((), dtype=torch.float32) if stat == "step" else torch.empty_like(p, device="cpu")
    return expected


def stats_record(stats: dict[str, dict[str, float]]) -> MetricRecord:
    """A visit's stats per key and part as a ``MetricRecord`` (``<key>/<part>``)."""
    return MetricRecord({f"{key}/{part}": float(v) for key, parts in stats.items() for part, v in parts.items()})


def stats_from(record: MetricRecord, keys: list[str]) -> dict[str, dict[str, float]]:
    """Stats back from :func:`stats_record`, for generator ``keys`` only, every value finite."""
    stats: dict[str, dict[str, float]] = {}
    for name, value in record.items():
        key, _, part = name.rpartition("/")
        if key not in keys or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RejectedState(f"visit stats: bad entry {name}={value!r}")
        stats.setdefault(key, {})[part] = float(value)
    if any("samples" not in parts for parts in stats.values()):
        raise RejectedState("visit stats: a key without its sample count")
    return stats
