"""The server side: the federated loop with each visit's training done by the client's Flower node.

:class:`FlowerFitLoop` is :class:`~a2vgen.federation.loop.FederatedFitLoop` with only
:meth:`~a2vgen.federation.loop.FederatedFitLoop.train_visit` replaced by a round trip; client order,
callbacks, round checkpoints and resume, FedAvg, exports and logging are the in-process ones.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from a2vgen.callbacks.reset import ClassChangeResetCallback
from a2vgen.errors import UserError
from a2vgen.federation.loop import ClientVisit, FederatedFitLoop
from a2vgen.federation.view import federation_of
from a2vgen.flower.codec import (
    RejectedState,
    bank_tensors,
    expected_optimizer,
    from_record,
    load_bank,
    load_optimizer,
    optimizer_tensors,
    stats_from,
    to_record,
)
from a2vgen.flower.settings import FlowerSettings, instantiate
from a2vgen.modules.base import ADAPTER_KEY, BaseGeneratorModule

log = logging.getLogger(__name__)

VISIT = "train.visit"
CLIENT_QUERY = "query.client"


class NodeFailure(RuntimeError):
    """A node gave no reply, or an error reply, for a visit."""


class NodeLink:
    """Which Flower node serves which a2vgen client, and the round trip of one visit."""

    def __init__(self, grid: Grid, wait: float = 120.0) -> None:
        self.grid = grid
        self.wait = wait
        self.nodes: dict[str, int] = {}

    def discover(self, clients: list[str]) -> None:
        """Ask new nodes for their client ids until every client in ``clients`` has one (``wait`` seconds)."""
        deadline = time.monotonic() + self.wait
        while True:
            connected = set(self.grid.get_node_ids())
            self.nodes = {cid: node for cid, node in self.nodes.items() if node in connected}
            unknown = sorted(connected - set(self.nodes.values()))
            if unknown:
                queries = [Message(RecordDict(), node, CLIENT_QUERY) for node in unknown]
                for reply in self.grid.send_and_receive(queries, timeout=self.wait):
                    self.learn(reply)
            missing = [cid for cid in clients if cid not in self.nodes]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise UserError(
                    f"no Flower node serves clients {missing} after {self.wait:.0f} s (connected: "
                    f"{sorted(self.nodes)}): start a SuperNode per client with --node-config 'client-id=\"<id>\"'"
                )
            time.sleep(0.5)

    def learn(self, reply: Message) -> None:
        """Record the client id a node reported (a node that reports none, or an error, is left out)."""
        node = reply.metadata.src_node_id
        try:
            if reply.has_error():
                raise ValueError(reply.error.reason.strip()[-300:])
            client = str(reply.content["client"]["id"])
        except (KeyError, TypeError, ValueError) as err:
            log.warning("node %s did not say which client it serves: %s", node, err)
            return
        if self.nodes.get(client, node) != node:
            log.warning(
                "client %s moves from node %s to node %s (a restarted SuperNode?)", client, self.nodes[client], node
            )
        self.nodes[client] = node

    def visit(self, client: str, content: RecordDict, round: int, timeout: float) -> Message:
        """Send one visit to ``client``'s node and return its reply (:class:`NodeFailure` when there is none)."""
        if client not in self.nodes:
            self.discover([client])
        message = Message(content, self.nodes[client], VISIT, group_id=f"round-{round}")
        replies = list(self.grid.send_and_receive([message], timeout=timeout))
        if not replies:
            self.nodes.pop(client, None)
            raise NodeFailure(f"no reply from the node of client {client} within {timeout:.0f} s")
        reply = replies[0]
        if reply.has_error():
            self.nodes.pop(client, None)
            raise NodeFailure(f"the node of client {client} failed: {reply.error.reason.strip()[-300:]}")
        return reply


class FlowerFitLoop(FederatedFitLoop):
    """The federated loop of the server; each visit trains on the client's node (see :mod:`a2vgen.flower.node`).

    Shared generators: the bank and its optimizer state go to the node and come back (relay through the
    server). Independent generators: the client's bank goes and comes back (FedAvg stays here); its Adam
    state never leaves the node, which keeps it in a state file per visited round (``node_rounds`` says
    which round each client's node continues from, and is checkpointed).
    """

    def __init__(self, trainer, link: NodeLink, settings: FlowerSettings) -> None:
        federation = federation_of(trainer)  # the trainer's own loop, which this one replaces
        super().__init__(trainer, federation.config, federation.server)
        self.link = link
        self.settings = settings
        self.node_rounds: dict[str, int] = {}

    def prepare(self) -> None:
        self.link.discover([spec.id for spec in self.datamodule.clients])
        super().prepare()

    @property
    def run_key(self) -> str:
        """The run's name on the nodes (its log folder's last two parts: a resumed run keeps it)."""
        folder = self.trainer.log_dir if self.trainer.loggers else None
        return "-".join(Path(folder).parts[-2:]) if folder else "run"

    def train_visit(self, module: BaseGeneratorModule, visit: ClientVisit) -> dict[str, dict[str, float]] | None:
        cid = visit.client.id
        bank = self.generators.activate(cid)
        try:
            for callback in self.trainer.callbacks:
                hook = getattr(callback, "on_client_start", None)
                if callable(hook) and not isinstance(callback, ClassChangeResetCallback):  # resets run on the node
                    hook(self.trainer, module, visit)
            content = self.request(module, visit)
            log.info("client %s: visit of round %d sent to its node (%.2f MB)", cid, visit.round, megabytes(content))
            attempts = 1 + self.settings.retries if self.settings.on_node_failure == "retry" else 1
            for attempt in range(1, attempts + 1):
                try:
                    reply = self.link.visit(cid, content, visit.round, self.settings.visit_timeout)
                    log.info("client %s: reply received (%.2f MB)", cid, megabytes(reply.content))
                    received = self.check_reply(reply.content, module, visit)
                    break
                except (NodeFailure, RejectedState) as err:
                    failure = err
                    log.warning("round %d client %s, attempt %d/%d: %s", visit.round, cid, attempt, attempts, err)
            else:
                if self.settings.on_node_failure == "stop":
                    raise UserError(f"round {visit.round}: the visit of client {cid} failed: {failure}")
                log.warning("round %d: client %s skipped for this round, its state unchanged", visit.round, cid)
                return None
            bank_state, optimizer_state, stats, resets = received
            load_bank(bank, bank_state)
            if optimizer_state is not None:
                load_optimizer(bank, self.trainer.optimizers[0], optimizer_state)
            else:
                self.node_rounds[cid] = visit.round
            for callback, (events, client_seen) in zip(self.reset_callbacks, resets):
                for event in events:
                    callback.record(self.trainer, event)
                if client_seen is not None:
                    callback.client_seen[cid] = client_seen
            return stats
        finally:
            self.generators.deactivate()

    @property
    def reset_callbacks(self) -> list[ClassChangeResetCallback]:
        return [c for c in self.trainer.callbacks if isinstance(c, ClassChangeResetCallback)]

    def request(self, module: BaseGeneratorModule, visit: ClientVisit) -> RecordDict:
        """The visit's message: what to train, the client's bank, and (shared) the optimizer state."""
        cid = visit.client.id
        content = RecordDict()
        content["visit"] = ConfigRecord(
            {
                "client": cid,
                "round": visit.round,
                "position": visit.position,
                "classes": list(visit.classes),
                "shared": self.config.shared_generators,
                "state-round": self.node_rounds.get(cid, 0),
                "run-key": self.run_key,
                "client-seen": json.dumps([c.client_seen.get(cid) for c in self.reset_callbacks]),
            }
        )
        content["bank"] = to_record(bank_tensors(module.bank))
        if self.config.shared_generators:
            content["optimizer"] = to_record(optimizer_tensors(module.bank, self.trainer.optimizers[0]))
        return content

    def check_reply(self, content: RecordDict, module: BaseGeneratorModule, visit: ClientVisit) -> tuple:
        """The reply's bank, optimizer state, stats and reset events, each checked against what was sent;
        :class:`RejectedState` (nothing loaded) when any of them does not fit."""
        cid = visit.client.id
        try:
            bank = from_record(content["bank"], bank_tensors(module.bank), f"bank from client {cid}")
            optimizer = None
            if self.config.shared_generators:
                record = content["optimizer"]
                optimizer = from_record(
                    record, expected_optimizer(module.bank, record), f"optimizer state from client {cid}"
                )
            stats = stats_from(content["stats"], visit.keys + [ADAPTER_KEY])
            resets = parse_resets(content["resets"]["events"], len(self.reset_callbacks), module.generator_keys)
        except KeyError as err:
            raise RejectedState(f"reply of client {cid} lacks {err}") from None
        return bank, optimizer, stats, resets

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "node_rounds": dict(self.node_rounds)}

    def _restore(self, state: dict) -> None:
        super()._restore(state)
        self.node_rounds = dict(state.get("node_rounds", {}))


def megabytes(content: RecordDict) -> float:
    """Size of the arrays in a message (what dominates its size on the wire)."""
    return sum(record.count_bytes() for record in content.array_records.values()) / 1e6


def parse_resets(text: str, callbacks: int, keys: list[str]) -> list[tuple[list[dict], list[str] | None]]:
    """A node's reset report: per reset callback, its new events and the client's seen classes (``None``:
    not kept by that callback)."""
    try:
        parsed = []
        for events, client_seen in json.loads(text):
            checked = []
            for event in events:
                checked.append({"round": int(event["round"]), "client": str(event["client"])} | {
                    name: [str(v) for v in event[name]] for name in ("classes", "keys", "seen")})  # fmt: skip
                if not set(checked[-1]["keys"]) <= set(keys):
                    raise ValueError(f"unknown keys {checked[-1]['keys']}")
            parsed.append((checked, None if client_seen is None else [str(c) for c in client_seen]))
    except (ValueError, TypeError, KeyError) as err:
        raise RejectedState(f"unreadable reset report ({err})") from None
    if len(parsed) != callbacks:
        raise RejectedState(f"reset report for {len(parsed)} callbacks, this run has {callbacks}")
    return parsed


def run_server(grid: Grid, settings: FlowerSettings):
    """Build the run from ``settings.config`` and fit it with every visit trained by its client's node;
    returns the trainer."""
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    module, datamodule, trainer = instantiate(settings.config)
    trainer.fit_loop = FlowerFitLoop(trainer, NodeLink(grid, settings.node_wait), settings)
    trainer.fit(module, datamodule=datamodule, ckpt_path=settings.ckpt_path or None)
    return trainer
