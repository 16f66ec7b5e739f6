"""Who owns which generators: one shared set, or one set per client swapped in by reference.

Owners are named by client id, the server by ``None`` (:data:`SERVER`). :meth:`owners` lists every bank
there is, :meth:`results` the banks that hold what the run trained (the server's when shared or averaged,
else each client's): evaluation, exports and the checkpoint reader ask these instead of deciding again.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Trainer

from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import BaseGeneratorModule

log = logging.getLogger(__name__)

SERVER = None  # the owner id of the server's bank
Owner = str | None


class SharedGenerators:
    """Every client trains the server's bank and optimizer (progressive training through clients)."""

    def __init__(self, module: BaseGeneratorModule, trainer: Trainer) -> None:
        self.module = module
        self.trainer = trainer

    def activate(self, client_id: str) -> GeneratorBank:
        return self.module.bank

    def deactivate(self) -> None:
        """Nothing to swap back: the server's bank never left."""

    def banks(self) -> dict[str, GeneratorBank]:
        """The clients' own banks: none."""
        return {}

    def owners(self) -> dict[Owner, GeneratorBank]:
        return {SERVER: self.module.bank}

    def results(self) -> dict[Owner, GeneratorBank]:
        return self.owners()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Shared state lives in the module and the Trainer's optimizer, which Lightning restores."""


class IndependentGenerators:
    """Each client keeps its own bank (the keys of its classes) and optimizer across rounds.

    A visit swaps the client's bank into the module and its optimizer into the Trainer, by reference;
    afterwards the server's bank and optimizer are put back, so the module's own state dict always has
    the server's layout (with ``fedavg``, ``averaged``, the server bank holds the latest averages).
    """

    def __init__(
        self,
        module: BaseGeneratorModule,
        trainer: Trainer,
        client_keys: dict[str, list[str]],
        averaged: bool = False,
    ) -> None:
        self.module = module
        self.averaged = averaged
        self.trainer = trainer
        self.server_bank = module.bank
        self.server_optimizers = list(trainer.strategy.optimizers)
        self.client_banks: dict[str, GeneratorBank] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for client_id, bank in module.build_banks(client_keys).items():
            self.client_banks[client_id] = bank.to(module.device)
            self.optimizers[client_id] = module.build_optimizer(bank)

    def activate(self, client_id: str) -> GeneratorBank:
        bank = self.client_banks[client_id]
        self.module.bank = bank
        self.trainer.strategy.optimizers = [self.optimizers[client_id]]
        return bank

    def deactivate(self) -> None:
        self.module.bank = self.server_bank
        self.trainer.strategy.optimizers = self.server_optimizers

    def banks(self) -> dict[str, GeneratorBank]:
        """The clients' own banks, by client id."""
        return self.client_banks

    def owners(self) -> dict[Owner, GeneratorBank]:
        return {SERVER: self.server_bank, **self.client_banks}

    def results(self) -> dict[Owner, GeneratorBank]:
        return {SERVER: self.server_bank} if self.averaged else dict(self.client_banks)

    def state_dict(self) -> dict:
        return {
            "keys": {cid: list(bank.keys) for cid, bank in self.client_banks.items()},
            "banks": {cid: bank.state_dict() for cid, bank in self.client_banks.items()},
            "optimizers": {cid: opt.state_dict() for cid, opt in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.client_banks) ^ set(state.get("banks", {}))
        if missing:
            raise ValueError(f"checkpoint's independent clients differ from this configuration's: {sorted(missing)}")
        for cid, bank in self.client_banks.items():
            bank.load_state_dict(state["banks"][cid])
            self.optimizers[cid].load_state_dict(state["optimizers"][cid])


def stored_client_banks(module: BaseGeneratorModule, state: dict) -> dict[str, GeneratorBank]:
    """The clients' banks from :meth:`IndependentGenerators.state_dict`'s dict (empty for shared state), in
    eval mode: what an offline tool needs of a checkpoint (no optimizers, no trainer)."""
    banks = {}
    for cid, keys in state.get("keys", {}).items():
        bank = module.build_bank(keys)
        bank.load_state_dict(state["banks"][cid])
        banks[cid] = bank.eval()
    return banks
