"""Helpers for federation tests: run a small federation and watch it through callback hooks."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback

from a2vgen.trainer import FederatedTrainer


def federated_fit(module, dm, callbacks=(), ckpt_path=None, **options):
    options.setdefault("max_rounds", 3)
    options.setdefault("logger", False)
    trainer = FederatedTrainer(
        enable_checkpointing=any(type(c).__name__ == "RoundCheckpoint" for c in callbacks),
        enable_progress_bar=False,
        callbacks=list(callbacks),
        **options,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def weights(module, key):
    return [p.detach().clone() for p in module.bank[key].parameters()]


class Recorder(Callback):
    """Records, per visit, what the client trains (bank, optimizer) and snapshots of chosen keys."""

    def __init__(self, keys=()):
        self.keys = list(keys)
        self.starts: list[dict] = []
        self.ends: list[dict] = []

    def _snap(self, trainer, module, visit):
        return {
            "client": visit.client.id,
            "round": visit.round,
            "bank": module.bank,
            "optimizer": trainer.optimizers[0],
            "weights": {k: weights(module, k) for k in self.keys if k in module.bank},
            "adapter": None
            if module.bank.adapter is None
            else [p.detach().clone() for p in module.bank.adapter.parameters()],
        }

    def on_client_start(self, trainer, module, visit):
        self.starts.append(self._snap(trainer, module, visit))

    def on_client_end(self, trainer, module, visit):
        # the loop swaps back the server's bank before this hook: read the client's bank from the loop
        bank = trainer.fit_loop.generators.activate(visit.client.id)
        self.ends.append(self._snap(trainer, module, visit) | {"stats": visit.stats})
        trainer.fit_loop.generators.deactivate()
        del bank


class StopAfterVisits(Callback):
    def __init__(self, visits: int):
        self.visits = visits

    def on_client_end(self, trainer, module, visit):
        if trainer.fit_loop.visits == self.visits:
            trainer.should_stop = True


def all_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))
