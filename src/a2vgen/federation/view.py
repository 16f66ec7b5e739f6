"""What callbacks may read of a running federation: the visit they are told about, and a typed view of the loop.

Callbacks receive a :class:`ClientVisit` in ``on_client_start``/``on_client_end`` and reach the rest through
:func:`federation_of` (the trainer's fit loop, checked against :class:`FederationView`), instead of fishing
attributes off the trainer. Callbacks share what they did through the view, not through each other: a reset
callback appends :class:`ResetEvent` s to ``resets``, the evaluation reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from a2vgen.data.clients import ClientSpec
from a2vgen.federation.config import FederationConfig
from a2vgen.federation.server import PreviewPipeline
from a2vgen.modules.bank import GeneratorBank


@dataclass
class ClientVisit:
    """What the loop tells callbacks about one client's local training."""

    client: ClientSpec
    round: int
    position: int
    classes: list[str]
    keys: list[str]
    num_samples: int
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class ResetEvent:
    """Generators reset before a client's visit: the new classes that caused it and what was seen before."""

    round: int
    client: str
    classes: list[str]
    keys: list[str]
    seen: list[str]

    def as_dict(self) -> dict:
        """Plain values (for checkpoints and JSON)."""
        return asdict(self)


@runtime_checkable
class FederationView(Protocol):
    """The federated fit loop as callbacks see it."""

    config: FederationConfig
    server: PreviewPipeline
    visits: int  # client visits finished so far: the step the loop logs the latest visit's metrics at, plus one
    current_visit: ClientVisit | None
    resets: list[ResetEvent]  # every reset of the run so far, in order (kept in checkpoints)

    def owners(self) -> dict[str | None, GeneratorBank]:
        """Every generator bank there is, by owner (a client id; ``None``: the server)."""
        ...

    def results(self) -> dict[str | None, GeneratorBank]:
        """The banks holding what the run trained: the server's when shared or averaged, else each client's."""
        ...


def federation_of(trainer) -> FederationView:
    """The trainer's federated fit loop (a ``TypeError`` for a plain Lightning trainer)."""
    loop = trainer.fit_loop
    if not isinstance(loop, FederationView):
        raise TypeError(f"a2vgen callbacks need a FederatedTrainer; this trainer's fit loop is {type(loop).__name__}")
    return loop


def output_path(trainer, path: str | None, name: str = "") -> Path:
    """``path`` when given, else ``name`` inside the run folder (the logger's, else ``default_root_dir``)."""
    return Path(path) if path else Path(trainer.log_dir or trainer.default_root_dir) / name
