"""The per-key export files of generators: written from a bank (:func:`export_bank`), read back into a plain
torch network without the training setup (:func:`load_exported`).

One ``<key>.safetensors`` (network weights plus the conditioning of the classes it serves) and one
``<key>.json`` (the network's registered type name and its ``config``, the classes it serves and has seen,
its age) per generator key. Network types resolve through :data:`~a2vgen.nn.registry.GENERATORS`: nothing
named in a file is imported.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from a2vgen.io import atomic_path
from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import BaseGeneratorModule
from a2vgen.nn.registry import GENERATORS

EXPORT_FORMAT = "a2vgen-generator/2"
OLD_FORMATS = ("a2vgen-generator/1",)  # network {"class_path", "init_args"}: the class path is a registry alias


def export_bank(
    module: BaseGeneratorModule, bank: GeneratorBank, out_dir: str | Path, client: str | None = None
) -> list[Path]:
    """One ``<key>.safetensors`` + ``<key>.json`` per key of ``bank`` (prefixed ``client-<id>.`` per client)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, slot in bank.items():
        network = {"type": GENERATORS.name_of(type(slot.net)), "config": slot.net.config}
        served = [c for c in module.classes if module.generator_key(c) == key]
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in slot.net.state_dict().items()}
        for i, cond in enumerate(torch.cat(p) for p in zip(*(module.class_condition(c) for c in served))):
            tensors[f"cond.{i}"] = cond.cpu().contiguous()
        meta = {
            "format": EXPORT_FORMAT,
            "key": key,
            "client": client,
            "granularity": module.granularity,
            "classes": served,
            "seen_classes": slot.seen_classes(module.classes),
            "age": int(slot.age),
            "network": network,
        }
        stem = out_dir / (key if client is None else f"client-{client}.{key}")
        weights, info = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
        with atomic_path(weights) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(info) as tmp:
            tmp.write_text(json.dumps(meta, indent=2))
        written += [weights, info]
    return written


def load_exported(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild an exported generator network; ``meta["cond"][class]`` holds each class's conditioning."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    meta_path, weights_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"export not found: need {meta_path} and {weights_path}")
    meta = json.loads(meta_path.read_text())
    name, config = _network_spec(meta, meta_path)
    try:
        cls = GENERATORS.get(name)
    except ValueError as err:
        raise type(err)(f"{meta_path}: {err}") from None
    try:
        net = cls(**config)
    except TypeError as err:
        raise ValueError(
            f"{meta_path}: {name} does not take this config ({err}): the export was written by another version "
            "of a2vgen or for another network; load it with the version that wrote it, or export again"
        ) from None
    tensors = load_file(str(weights_path))
    try:
        net.load_state_dict({k[len("net.") :]: v for k, v in tensors.items() if k.startswith("net.")})
    except RuntimeError as err:
        raise ValueError(f"{weights_path}: weights do not fit {name}(**config) of {meta_path}: {err}") from None
    conds = [tensors[f"cond.{i}"] for i in range(sum(k.startswith("cond.") for k in tensors))]
    meta["cond"] = {c: [t[i : i + 1] for t in conds] for i, c in enumerate(meta["classes"])}
    return net.eval(), meta


def _network_spec(meta: dict, meta_path: Path) -> tuple[str, dict]:
    """The registered network name and its config from an export's metadata (any supported format)."""
    fmt, network = meta.get("format"), meta.get("network")
    if fmt not in (EXPORT_FORMAT, *OLD_FORMATS):
        raise ValueError(f"{meta_path}: format {fmt!r}, expected {EXPORT_FORMAT!r}")
    fields = ("type", "config") if fmt == EXPORT_FORMAT else ("class_path", "init_args")
    name, config = (network.get(f) for f in fields) if isinstance(network, dict) else (None, None)
    if not isinstance(name, str) or not isinstance(config, dict):
        raise ValueError(f"{meta_path}: no network type and config under 'network'")
    return name, config
