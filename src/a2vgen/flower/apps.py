"""The Flower ``ServerApp`` and ``ClientApp`` of a2vgen (components of an app written by ``a2vgen flower-app``).

Lightning is imported only by the handlers that train: a node answers the server's "which client?" query
without it (in deployment every message starts a fresh ClientApp process).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from a2vgen.console import log_to_stderr
from a2vgen.flower.settings import FlowerSettings, node_client

server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def serve(grid: Grid, context: Context) -> None:
    """Fit the run of the app's config, each visit trained by its client's node."""
    from a2vgen.flower.server import run_server

    log_to_stderr()
    run_server(grid, FlowerSettings.from_run_config(dict(context.run_config)))


@client_app.query("client")
def client_id(message: Message, context: Context) -> Message:
    """Tell the server which a2vgen client this node serves."""
    settings = FlowerSettings.from_run_config(dict(context.run_config))
    content = RecordDict({"client": ConfigRecord({"id": node_client(dict(context.node_config), settings.config)})})
    return Message(content, reply_to=message)


@client_app.train("visit")
def visit(message: Message, context: Context) -> Message:
    """Train one visit of this node's client and send back its state, stats and reset events."""
    from a2vgen.flower.node import run_visit

    log_to_stderr()
    settings = FlowerSettings.from_run_config(dict(context.run_config))
    return Message(run_visit(message.content, dict(context.node_config), settings), reply_to=message)
