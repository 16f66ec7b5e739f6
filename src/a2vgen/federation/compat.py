"""What a checkpoint fixes and what a resumed (or evaluated) run may change."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from a2vgen.errors import UserError
from a2vgen.federation.checkpoint import read_checkpoint

log = logging.getLogger(__name__)

# Module arguments that only steer future training: a resume applies the new value and logs it.
# (``kl_weight``, ``min_noise_var``: the ELBO objective's weights, where the module has them.)
MUTABLE = (
    "lr", "weight_decay", "input_noise", "grad_clip", "beta_max", "beta_warmup_epochs",
    "sim_weight_start", "sim_weight_end", "sim_decay_epochs", "adapter_weight", "kl_weight", "min_noise_var",
)  # fmt: skip


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def _class_path(module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def check_checkpoint(module, ckpt_path: str | Path, resuming: bool) -> None:
    """Compare ``module`` (built from this run's config) with the checkpoint's configuration.

    Every module argument except :data:`MUTABLE` (network sizes, classes, shapes, groups, seed, the module
    class) must match: otherwise one error names each differing value on both sides. When ``resuming``, a
    changed mutable value is applied and logged; a weights-only round snapshot cannot be resumed from.
    """
    try:
        ckpt = read_checkpoint(ckpt_path, mmap=True)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    meta, saved = ckpt["a2vgen"], dict(ckpt.get("hyper_parameters", {}))
    if resuming and "optimizer_states" not in ckpt:
        raise UserError(
            f"{ckpt_path} is a weights-only round snapshot (no optimizer state): resume from last.ckpt; "
            "round files serve sample, export, validate, test, predict and report"
        )
    mine = dict(module.hparams)
    diffs = []
    if meta.get("class_path") != _class_path(module):
        diffs.append(f"model: checkpoint {meta.get('class_path')}, this run {_class_path(module)}")
    for name in sorted(set(saved) | set(mine)):
        if name.startswith("_") or name in MUTABLE or _equal(saved.get(name), mine.get(name)):
            continue
        diffs.append(f"model.init_args.{name}: checkpoint {saved.get(name)!r}, this run {mine.get(name)!r}")
    if diffs:
        raise UserError(
            f"{ckpt_path} does not match this configuration: "
            + "; ".join(diffs)
            + " (a resume may change only lr, weight_decay, input_noise, grad_clip, the loss schedule, adapter_weight)"
        )
    for name in MUTABLE if resuming else ():
        if name in saved and not _equal(saved[name], mine.get(name)):
            log.info("resume: model.init_args.%s %r -> %r (checkpoint -> this run)", name, saved[name], mine.get(name))
