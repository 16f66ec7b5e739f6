"""The node side: train the one visit the server sends, on this node's client, and report back.

The node builds the same run from the same config (its own data for its client), loads the state it was
sent (and, for independent generators, its own Adam state from a state file), and runs the in-process
loop's :meth:`~a2vgen.federation.loop.FederatedFitLoop.train_visit`: the reset callback runs here, where
the optimizer state lives, and its events travel back in the reply. It never aggregates.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from flwr.app import ConfigRecord, RecordDict
from safetensors.torch import load_file, save_file

from a2vgen.callbacks.reset import ClassChangeResetCallback
from a2vgen.errors import UserError
from a2vgen.federation.loop import ClientVisit, FederatedFitLoop
from a2vgen.federation.server import PreviewPipeline
from a2vgen.federation.state import IndependentGenerators, SharedGenerators
from a2vgen.federation.view import federation_of
from a2vgen.flower.codec import (
    bank_tensors,
    check_tensors,
    expected_optimizer,
    from_record,
    load_bank,
    load_optimizer,
    optimizer_tensors,
    stats_record,
    to_record,
)
from a2vgen.flower.settings import FlowerSettings, instantiate, node_client
from a2vgen.io import atomic_path
from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import BaseGeneratorModule

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]*$")


class NodeState:
    """Optimizer-state files of an independent client on its node, one per visited round:
    ``<root>/<run key>/client-<id>/round-<r>.safetensors`` (the newest ``kept`` are kept)."""

    def __init__(self, root: Path, run_key: str, client: str, kept: int) -> None:
        for what, name in (("run key", run_key), ("client id", client)):
            if not NAME.match(name):
                raise UserError(f"{what} {name!r} cannot name a folder: use letters, digits, '_', '-', '.'")
        self.folder = root / run_key / f"client-{client}"
        self.kept = kept

    def rounds(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("round-*.safetensors"))

    def load(self, round: int) -> dict[str, torch.Tensor]:
        path = self.folder / f"round-{round}.safetensors"
        if not path.is_file():
            raise UserError(
                f"no optimizer state of round {round} in {self.folder} (rounds kept: {self.rounds()}): this node "
                "lost its state files, or the server resumed from an older checkpoint than node-states-kept allows"
            )
        return load_file(path)

    def save(self, round: int, tensors: dict[str, torch.Tensor]) -> None:
        """Write atomically, then drop all but the newest ``kept`` files."""
        with atomic_path(self.folder / f"round-{round}.safetensors") as tmp:
            save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, tmp)
        for old in self.rounds()[: -self.kept]:
            (self.folder / f"round-{old}.safetensors").unlink(missing_ok=True)


class NodeVisitLoop(FederatedFitLoop):
    """Runs the single visit described by ``request`` inside ``Trainer.fit``; the reply is left in ``reply``."""

    def __init__(self, trainer, request: RecordDict, client: str, state: NodeState) -> None:
        super().__init__(trainer, federation_of(trainer).config, PreviewPipeline())  # previews stay on the server
        self.request = request
        self.client = client
        self.state = state
        self.reply: RecordDict | None = None

    def _setup_generators(self, module: BaseGeneratorModule) -> None:
        if self.config.shared_generators:
            self.generators = SharedGenerators(module, self.trainer)
        else:
            keys = module.keys_for(self.spec.all_classes)
            averaged = not self.config.per_client_results
            self.generators = IndependentGenerators(module, self.trainer, {self.client: keys}, averaged)

    @property
    def spec(self):
        return next(spec for spec in self.datamodule.clients if spec.id == self.client)

    def client_state(self, module: BaseGeneratorModule) -> tuple[GeneratorBank, torch.optim.Optimizer]:
        if isinstance(self.generators, IndependentGenerators):
            return self.generators.client_banks[self.client], self.generators.optimizers[self.client]
        return module.bank, self.trainer.optimizers[0]

    def run_round(self, module: BaseGeneratorModule) -> None:
        info = self.request["visit"]
        if bool(info["shared"]) != self.config.shared_generators:
            raise UserError("the server and this node run different sharing modes: give both the same config")
        classes = [str(c) for c in info["classes"]]
        visit = ClientVisit(
            self.spec,
            int(info["round"]),
            int(info["position"]),
            classes,
            module.keys_for(classes),
            self.datamodule.client(self.client).num_samples("train", classes),
        )
        bank, optimizer = self.client_state(module)
        load_bank(bank, from_record(self.request["bank"], bank_tensors(bank), "bank from the server"))
        if self.config.shared_generators:
            record = self.request["optimizer"]
            load_optimizer(bank, optimizer, from_record(record, expected_optimizer(bank, record), "server optimizer"))
        elif int(info["state-round"]) > 0:
            saved = self.state.load(int(info["state-round"]))
            load_optimizer(
                bank, optimizer, check_tensors(saved, expected_optimizer(bank, saved), str(self.state.folder))
            )
        resets = [c for c in self.trainer.callbacks if isinstance(c, ClassChangeResetCallback)]
        for callback, seen in zip(resets, json.loads(info["client-seen"])):
            callback.client_seen = {} if seen is None else {self.client: list(seen)}
        before = [len(c.events) for c in resets]
        self.round, self.position = visit.round, visit.position
        stats = self.train_visit(module, visit)
        reply = RecordDict()
        reply["bank"] = to_record(bank_tensors(bank))
        if self.config.shared_generators:
            reply["optimizer"] = to_record(optimizer_tensors(bank, optimizer))
        else:
            self.state.save(visit.round, optimizer_tensors(bank, optimizer))
        reply["stats"] = stats_record(stats)
        report = [[c.events[n:], c.client_seen.get(self.client)] for c, n in zip(resets, before)]
        reply["resets"] = ConfigRecord({"events": json.dumps(report)})
        self.reply = reply
        self.round = self.config.max_rounds + 1  # done


_BUILT: dict[str, tuple] = {}


def built(config: str) -> tuple:
    """The module, data module and trainer of ``config``, built once per process (a simulated node's
    process serves many messages). The trainer keeps only the reset callbacks: logging, checkpoints,
    exports and evaluation are the server's."""
    if config not in _BUILT:
        _BUILT.clear()
        module, datamodule, trainer = instantiate(
            config, "--trainer.logger=false", "--trainer.enable_progress_bar=false"
        )
        trainer.callbacks = [c for c in trainer.callbacks if isinstance(c, ClassChangeResetCallback)]
        _BUILT[config] = module, datamodule, trainer
    return _BUILT[config]


def state_root(node_config: dict, settings: FlowerSettings) -> Path:
    """Where this node keeps its state files: ``state-dir`` of its node config, else the run config's
    ``node-state-dir``, else ``$FLWR_HOME/a2vgen-node-state``."""
    if node_config.get("state-dir"):
        return Path(str(node_config["state-dir"]))
    if settings.node_state_dir:
        return Path(settings.node_state_dir)
    return Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")) / "a2vgen-node-state"


def run_visit(request: RecordDict, node_config: dict, settings: FlowerSettings) -> RecordDict:
    """Train the visit in ``request`` on this node and return the reply's content."""
    client = node_client(node_config, settings.config)
    if str(request["visit"]["client"]) != client:
        raise UserError(f"this node serves client {client}, the server sent a visit of {request['visit']['client']}")
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    module, datamodule, trainer = built(settings.config)
    state = NodeState(
        state_root(node_config, settings), str(request["visit"]["run-key"]), client, settings.node_states_kept
    )
    loop = NodeVisitLoop(trainer, request, client, state)
    trainer.fit_loop = loop
    trainer.fit(module, datamodule=datamodule)
    return loop.reply
