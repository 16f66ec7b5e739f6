"""The run configuration of an a2vgen Flower app (``[tool.flwr.app.config]`` in its ``pyproject.toml``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Literal

import yaml

from a2vgen.errors import UserError

FAILURE_POLICIES = ("retry", "skip", "stop")


@dataclass
class FlowerSettings:
    """Options of a Flower run, each a ``--run-config`` key (``_`` written ``-``) of ``flwr run``.

    Args:
        config: the resolved a2vgen config (YAML text) that the server and every node build from.
        ckpt_path: resume the server from this checkpoint (``last``: the newest run); empty: a new run.
        on_node_failure: a node that gives no reply, fails, or returns a state that does not fit:
            ``retry`` the visit up to ``retries`` times and then skip the client for the round, ``skip``
            it at once, or ``stop`` the run.
        retries: extra attempts of a failed visit under ``retry``.
        visit_timeout: seconds a visit's round trip may take before it counts as failed.
        node_wait: seconds to wait for every client's node to connect (at start and before a retry).
        threads: torch threads of the server and of every node (0: leave the default); bit-exact
            comparisons with an in-process run need the same count on both sides.
        node_state_dir: where nodes keep their optimizer state (independent generators) when their
            ``node_config`` sets no ``state-dir``; empty: ``$FLWR_HOME/a2vgen-node-state``.
        node_states_kept: optimizer-state files a node keeps per client (one per visited round); a server
            resumed from a checkpoint older than that cannot continue those clients' Adam state.
    """

    config: str
    ckpt_path: str = ""
    on_node_failure: Literal["retry", "skip", "stop"] = "retry"
    retries: int = 2
    visit_timeout: float = 3600.0
    node_wait: float = 120.0
    threads: int = 0
    node_state_dir: str = ""
    node_states_kept: int = 3

    def __post_init__(self) -> None:
        if self.on_node_failure not in FAILURE_POLICIES:
            raise UserError(f"on-node-failure must be one of {list(FAILURE_POLICIES)}, got {self.on_node_failure!r}")
        if self.retries < 0 or self.node_states_kept < 1:
            raise UserError("retries must be >= 0 and node-states-kept >= 1")

    @classmethod
    def from_run_config(cls, run_config: dict) -> FlowerSettings:
        """Settings from Flower's run config (keys written with ``-``)."""
        names = {f.name.replace("_", "-"): f.name for f in fields(cls)}
        unknown = sorted(set(run_config) - set(names))
        if unknown:
            raise UserError(f"unknown run config keys {unknown}; known: {sorted(names)}")
        if "config" not in run_config:
            raise UserError("the run config has no 'config' (the a2vgen YAML): write the app with a2vgen flower-app")
        return cls(**{names[k]: v for k, v in run_config.items()})

    def run_config(self) -> dict:
        """This object as Flower run config values."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def instantiate(config: str, *overrides: str):
    """The module, data module and trainer of an a2vgen config (YAML text), as ``a2vgen fit`` builds them."""
    from a2vgen.cli import run_lightning

    with warnings.catch_warnings():  # a Flower process's own argv is not meant for this parser
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = run_lightning(["--config", config, *overrides], run=False)
    return cli.model, cli.datamodule, cli.trainer


def node_client(node_config: dict, config: str) -> str:
    """The a2vgen client this node serves: ``client-id`` in its node config, or (simulation) the client
    listed at ``partition-id`` in the run's config."""
    if "client-id" in node_config:
        return str(node_config["client-id"])
    if "partition-id" in node_config:
        clients = yaml.safe_load(config)["data"]["clients"]
        index = int(node_config["partition-id"])
        if not 0 <= index < len(clients):
            raise UserError(f"partition-id {index} has no client: the config lists {len(clients)} clients")
        return str(clients[index]["id"])
    raise UserError("this SuperNode serves no client: start it with --node-config 'client-id=\"<id>\"'")
