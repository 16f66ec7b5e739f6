"""Helpers for the Flower tests: a tiny class-incremental config, and a grid whose nodes run in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import yaml
from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from lightning.pytorch import Callback

from a2vgen.flower.apps import client_app


def tiny_config(
    save_dir: str | None, shared: bool, rounds: int = 3, every_n_visits: int = 0, callbacks: tuple = ()
) -> str:
    """3 clients with class schedules, the reset callback, per-class generators on small demo data."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_rounds": rounds,
            "local_epochs": 2,
            "shared_generators": shared,
            "aggregation": "none" if shared else "fedavg",
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "logger": False
            if save_dir is None
            else {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": save_dir, "name": "fl"},
            },
            "callbacks": [
                {"class_path": "a2vgen.callbacks.ClassChangeResetCallback", "init_args": {"scope": "generator"}},
                {
                    "class_path": "a2vgen.callbacks.RoundCheckpoint",
                    "init_args": {"every_n_rounds": 1, "keep_last": 1, "every_n_visits": every_n_visits},
                },
                *({"class_path": path} for path in callbacks),
            ],
        },
        "model": {
            "class_path": "a2vgen.modules.PerClassGenerator",
            "init_args": {"hidden_dim": 32, "latent_dim": 8, "cond_width": 8},
        },
        "data": {
            "batch_size": 8,
            "source": {
                "class_path": "a2vgen.data.sources.DemoEmbeddings",
                "init_args": {
                    "num_classes": 6,
                    "train_per_class": 16,
                    "val_per_class": 4,
                    "test_per_class": 4,
                    "audio_dim": 16,
                    "cond_tokens": 6,
                    "cond_dim": 8,
                },
            },  # fmt: skip
            "clients": [
                {"id": "0", "schedule": {1: ["dog", "rain"], 2: ["dog", "rain", "rooster"]}},
                {"id": "1", "schedule": {1: ["dog", "sea_waves"], 3: ["dog", "sea_waves", "crying_baby"]}},
                {"id": "2", "schedule": {1: ["crackling_fire"], 2: ["crackling_fire", "rain"]}},
            ],
        },
    }
    return yaml.safe_dump(config, sort_keys=False)


class LocalGrid:
    """A Flower grid whose three nodes (partition ids 0-2) run the a2vgen ClientApp in this process.

    ``fault(message, node)`` may return ``"drop"`` (no reply: the node vanished), ``"error"`` (an error
    reply), a function that alters the reply's content, or ``None`` (a normal reply).
    """

    def __init__(self, run_config: dict, fault: Callable | None = None) -> None:
        self.run_config = run_config
        self.fault = fault
        self.nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
        self.visits: list[tuple[int, int]] = []  # (node, round)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (
            1,
            0,
            1,
        )  # what a ServerApp process sets before it builds messages

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            context = Context(1, node, self.nodes[node], RecordDict(), self.run_config)
            action = self.fault(message, node) if self.fault else None
            if action == "drop":
                continue
            if action == "error":
                replies.append(Message(Error(code=5, reason="node unavailable"), reply_to=message))
                continue
            if message.metadata.message_type == "train.visit":
                self.visits.append((node, int(message.content["visit"]["round"])))
            reply = client_app(message, context)
            if callable(action):
                action(reply.content)
            replies.append(reply)
        return replies


def bank_state(trainer) -> dict[str, torch.Tensor]:
    """Server bank plus every independent client's bank, by name."""
    loop = trainer.fit_loop
    out = {f"server/{k}": v for k, v in trainer.lightning_module.bank.state_dict().items()}
    for cid, bank in loop.generators.banks().items():
        out.update({f"{cid}/{k}": v for k, v in bank.state_dict().items()})
    return out


class BankSnapshots(Callback):
    """The server's bank at every visit start (the server still calls ``on_client_start``), in ``STATES``."""

    STATES: list[tuple[int, str, dict[str, torch.Tensor]]] = []

    def on_client_start(self, trainer, module, visit) -> None:
        state = {k: v.clone() for k, v in module.bank.state_dict().items()}
        self.STATES.append((visit.round, visit.client.id, state))
