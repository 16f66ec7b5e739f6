"""The offline tools ``a2vgen sample`` and ``a2vgen export``: synthetic samples and per-key exports of a checkpoint.

Exports (:mod:`a2vgen.modules.export_format`) load without the training setup::

    net, meta = a2vgen.export.load_exported("runs/demo/version_0/exports/dog")
    audio = net.sample(8, meta["cond"]["dog"])   # [8, L, D_a]

Checkpoints are read by :mod:`a2vgen.federation.checkpoint` (module classes resolve through
:data:`~a2vgen.modules.registry.MODULES`; nothing named in a file is imported).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from a2vgen.data.embeddings import EmbeddingSet, save_embeddings
from a2vgen.federation.checkpoint import load_module, module_class, read_checkpoint, stored_results
from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import BaseGeneratorModule
from a2vgen.modules.export_format import EXPORT_FORMAT, export_bank, load_exported

__all__ = [  # the checkpoint reader and the export format are re-exported: their public home used to be here
    "EXPORT_FORMAT",
    "export_bank",
    "export_checkpoint",
    "load_exported",
    "load_module",
    "module_class",
    "read_checkpoint",
    "sample_set",
    "write_prompt_samples",
    "write_samples",
]

log = logging.getLogger(__name__)


def sample_set(
    module: BaseGeneratorModule, classes: list[str], n: int, seed: int = 0, bank: GeneratorBank | None = None
) -> EmbeddingSet:
    """``n`` synthetic samples per class from ``bank`` (default: the module's), as an embedding set (labels
    index ``classes``)."""
    g = torch.Generator().manual_seed(seed)
    audio = [module.sample(c, n, generator=g, bank=bank) for c in classes]
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
    out = Path(out)
    written = []
    for cid, bank in stored_results(module, ckpt).items():
        held = [c for c in classes if module.generator_key(c) in bank]
        if not held:
            continue
        data = sample_set(module, held, num_samples, seed, bank)
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


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Export every generator of a checkpoint (per client and key for independent, unaggregated runs)."""
    module, ckpt = load_module(ckpt_path)
    banks = stored_results(module, ckpt)
    return [p for owner, bank in banks.items() for p in export_bank(module, bank, out_dir, client=owner)]
