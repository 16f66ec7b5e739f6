"""Read a2vgen checkpoints: the one reader for the CLI, ``export``, ``sample`` and ``report``.

It checks a checkpoint's metadata against the module registry before anything is built (nothing named in a
file is imported), builds the generator module, and answers who owns which generators from the federation's
own state (:mod:`a2vgen.federation.state`'s layout, found through :func:`a2vgen.lightning_adapter.fit_loop_state`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from a2vgen.federation.config import per_client_results
from a2vgen.federation.state import SERVER, Owner, stored_client_banks
from a2vgen.lightning_adapter import fit_loop_state
from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import BaseGeneratorModule, CheckpointMismatchError
from a2vgen.modules.registry import MODULES


def read_checkpoint(path: str | Path, *, mmap: bool = False, metadata: bool = True) -> dict:
    """Load a checkpoint with ``weights_only`` (nothing in the file can run code); errors name the file and
    what is wrong. ``mmap``: tensor data stays on disk until read; ``metadata``: require a2vgen's metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({_reason(err)})") from err
    if not isinstance(ckpt, dict) or (metadata and "a2vgen" not in ckpt):
        raise ValueError(f"{path}: not an a2vgen checkpoint (no 'a2vgen' metadata)")
    return ckpt


def _reason(err: Exception) -> str:
    """Why ``torch.load`` refused a file, in one line (its own advice to load without ``weights_only`` is
    dropped: a2vgen never loads a file that way)."""
    if isinstance(err, pickle.UnpicklingError):
        return "not a torch checkpoint, or it holds objects other than tensors and plain values"
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no detail'}"


def readable(path: str | Path) -> bool:
    """Whether ``path`` is a loadable checkpoint (memory-mapped: tensor data is not read)."""
    try:
        read_checkpoint(path, mmap=True, metadata=False)
    except (FileNotFoundError, ValueError):
        return False
    return True


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


def stored_owners(module: BaseGeneratorModule, ckpt: dict) -> dict[Owner, GeneratorBank]:
    """Every generator bank of a checkpoint by owner: the server's (``None``), then each independent client's."""
    return {SERVER: module.bank, **stored_client_banks(module, fit_loop_state(ckpt).get("generators", {}))}


def stored_results(module: BaseGeneratorModule, ckpt: dict) -> dict[Owner, GeneratorBank]:
    """The banks holding what the checkpoint's run trained: the server's when shared or averaged, else each
    client's (as :meth:`a2vgen.federation.state.IndependentGenerators.results` says during training)."""
    state = fit_loop_state(ckpt)
    if not per_client_results(state.get("shared_generators", True), state.get("aggregation", "none")):
        return {SERVER: module.bank}
    return stored_client_banks(module, state.get("generators", {}))
