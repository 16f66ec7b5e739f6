"""Load trained generators from checkpoints; write synthetic samples and per-key exports.

Exports are one ``<key>.safetensors`` (network weights plus the conditioning of the classes it serves)
and one ``<key>.json`` (the network's registered type name and its ``config``, and which classes it
serves) per generator key, loadable without the training setup::

    net, meta = a2vgen.export.load_exported("runs/demo/version_0/exports/dog")
    audio = net.sample(8, meta["cond"]["dog"])   # [8, L, D_a]

Nothing named in a file is imported: network types resolve through
:data:`~a2vgen.nn.registry.GENERATORS`, module classes through :data:`~a2vgen.modules.registry.MODULES`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from a2vgen.data.embeddings import EmbeddingSet, save_embeddings
from a2vgen.io import atomic_path
from a2vgen.lightning_adapter import fit_loop_state
from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import BaseGeneratorModule, CheckpointMismatchError
from a2vgen.modules.registry import MODULES
from a2vgen.nn.registry import GENERATORS

log = logging.getLogger(__name__)

EXPORT_FORMAT = "a2vgen-generator/2"
OLD_FORMATS = ("a2vgen-generator/1",)  # network {"class_path", "init_args"}: the class path is a registry alias


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without unpickling code; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "a2vgen" not in ckpt:
        raise ValueError(f"{path}: not an a2vgen checkpoint (no 'a2vgen' metadata)")
    return ckpt


def module_class(path: str | Path, ckpt: dict) -> type[BaseGeneratorModule]:
    """The registered module class a checkpoint names, after checking its metadata; imports nothing."""
    meta, hparams = ckpt["a2vgen"], ckpt.get("hyper_parameters", {})
    if not isinstance(meta, dict) or not isinstance(hparams, dict):
        raise ValueError(f"{path}: malformed 'a2vgen' metadata or hyper-parameters")
    try:
        cls = MODULES.get(meta.get("class_path"))
    except ValueError as err:
        raise type(err)(f"{path}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseGeneratorModule)):
        raise TypeError(f"{path}: {meta.get('class_path')} is registered but is not an a2vgen generator module")
    diffs = []
    named = hparams.get("_class_path", meta["class_path"])  # LightningCLI's record of the class it built
    if named != meta["class_path"] and not _resolves_to(named, cls):
        diffs.append(f"class_path: metadata {meta['class_path']!r}, hyper-parameters {named!r}")
    if meta.get("granularity") != cls.granularity:
        diffs.append(f"granularity: checkpoint has {meta.get('granularity')!r}, {cls.__name__} is {cls.granularity!r}")
    diffs += [
        f"{name}: metadata {meta.get(name)!r}, hyper-parameters {hparams[name]!r}"
        for name in ("classes", "audio_shape", "cond_shapes")
        if hparams.get(name) is not None and hparams[name] != meta.get(name)
    ]
    if diffs:
        raise CheckpointMismatchError(f"{path}: inconsistent checkpoint; " + "; ".join(diffs))
    return cls


def _resolves_to(name: object, cls: type) -> bool:
    try:
        return MODULES.get(name) is cls
    except ValueError:
        return False


def load_module(path: str | Path) -> tuple[BaseGeneratorModule, dict]:
    """The generator module of a checkpoint (its registered class) and the raw checkpoint.

    The class comes from the module registry and the metadata is checked before anything is built; the
    module is then built from the checkpoint's hyper-parameters (plain values) and its weights loaded.
    """
    ckpt = read_checkpoint(path)
    cls = module_class(path, ckpt)
    hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    try:
        module = cls(**hparams)
    except TypeError as err:
        raise CheckpointMismatchError(f"{path}: its hyper-parameters do not fit {cls.__name__}: {err}") from None
    try:
        module.on_load_checkpoint(ckpt)
        module.load_state_dict(ckpt["state_dict"])
    except (CheckpointMismatchError, RuntimeError) as err:
        raise CheckpointMismatchError(f"{path}: {err}") from None
    module.eval()
    return module, ckpt


def client_banks(module: BaseGeneratorModule, ckpt: dict) -> dict[str, GeneratorBank]:
    """Per-client generators of an independent run without aggregation (empty when shared)."""
    state = fit_loop_state(ckpt).get("generators", {})
    banks = {}
    for cid, keys in state.get("keys", {}).items():
        bank = module.build_bank(keys)
        bank.load_state_dict(state["banks"][cid])
        banks[cid] = bank.eval()
    return banks


def sample_set(module: BaseGeneratorModule, classes: list[str], n: int, seed: int = 0) -> EmbeddingSet:
    """``n`` synthetic samples per class, as an embedding set (labels index ``classes``)."""
    g = torch.Generator().manual_seed(seed)
    audio = [module.sample(c, n, generator=g) for c in classes]
    cond = [torch.cat(parts) for parts in zip(*(module.class_condition(c) for c in classes))]
    return EmbeddingSet(
        audio=torch.cat(audio),
        labels=torch.arange(len(classes)).repeat_interleave(n),
        classes=list(classes),
        cond=cond,
        meta={"synthetic": "true", "granularity": module.granularity, "seed": str(seed)},
        origin="<samples>",
    )


def write_samples(
    ckpt_path: str | Path, out: str | Path, classes: list[str] | None = None, num_samples: int = 16, seed: int = 0
) -> list[Path]:
    """Sample every class (or ``classes``) from a checkpoint into ``out`` (one file per client when the
    run kept independent generators without aggregation)."""
    module, ckpt = load_module(ckpt_path)
    classes = classes or module.classes
    for c in classes:
        module.generator_key(c)  # unknown class: error listing the available ones
    banks = client_banks(module, ckpt) if not _aggregated(ckpt) else {}
    out = Path(out)
    written = []
    targets = banks or {None: module.bank}
    for cid, bank in targets.items():
        module.bank = bank
        held = [c for c in classes if module.generator_key(c) in bank]
        if not held:
            continue
        data = sample_set(module, held, num_samples, seed)
        data.meta.update({"checkpoint": str(ckpt_path), "client": str(cid) if cid is not None else "server"})
        path = out if cid is None else out.with_name(f"{out.stem}.client-{cid}{out.suffix}")
        save_embeddings(path, data)
        written.append(path)
    return written


def write_prompt_samples(
    ckpt_path: str | Path,
    out: str | Path,
    prompt: str,
    pipeline: str,
    classes: list[str] | None = None,
    num_samples: int = 16,
    seed: int = 0,
) -> Path:
    """Sample for a free-text prompt, encoded by ``pipeline``'s text encoders, from the generator of
    ``classes[0]`` (or the module's only generator, e.g. unified). A conditional generator can be asked
    for classes it never saw; how good that is depends on how well it learned the conditioning map."""
    from a2vgen.encoders.text import encode_prompt

    module, _ = load_module(ckpt_path)
    if classes:
        key = module.generator_key(classes[0])
    elif len(module.generator_keys) == 1:
        key = module.generator_keys[0]
    else:
        raise ValueError(
            f"--prompt with {len(module.generator_keys)} generators: name the generator's class in --classes"
        )
    cond = [c.unsqueeze(0) for c in encode_prompt(prompt, pipeline)]
    shapes = [list(c.shape[1:]) for c in cond]
    if shapes != module.cond_shapes:
        raise ValueError(f"{pipeline} encodes prompts as {shapes}, the generators were trained on {module.cond_shapes}")
    g = torch.Generator().manual_seed(seed)
    audio = module.bank[key].net.sample(num_samples, cond, generator=g)
    data = EmbeddingSet(
        audio=audio,
        labels=torch.zeros(num_samples, dtype=torch.long),
        classes=[prompt],
        cond=cond,
        meta={"synthetic": "true", "prompt": prompt, "generator": key, "checkpoint": str(ckpt_path)},
        origin="<prompt samples>",
    )
    save_embeddings(out, data)
    return Path(out)


def _aggregated(ckpt: dict) -> bool:
    state = fit_loop_state(ckpt)
    return state.get("shared_generators", True) or state.get("aggregation", "none") != "none"


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
            "seen_classes": [c for c, s in zip(module.classes, slot.seen.tolist()) if s],
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


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Export every generator of a checkpoint (per client and key for independent, unaggregated runs)."""
    module, ckpt = load_module(ckpt_path)
    banks = client_banks(module, ckpt) if not _aggregated(ckpt) else {}
    if not banks:
        return export_bank(module, module.bank, out_dir)
    return [p for cid, bank in banks.items() for p in export_bank(module, bank, out_dir, client=cid)]


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
    net = cls(**config)
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
