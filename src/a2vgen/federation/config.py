"""Federation options (the ``FederatedTrainer``'s own arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class FederationConfig:
    max_rounds: int = 3
    local_epochs: int = 1
    shared_generators: bool = True
    aggregation: Literal["none", "fedavg"] = "none"
    client_fraction: float = 1.0
    shuffle_clients: bool = False
    seed: int = 0
    page_optimizer_state: bool | Literal["auto"] = "auto"
    stack_generators: bool = True

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if not 0.0 < self.client_fraction <= 1.0:
            raise ValueError(f"client_fraction must be in (0, 1], got {self.client_fraction}")
        if self.aggregation not in ("none", "fedavg"):
            raise ValueError(f"aggregation must be 'none' or 'fedavg', got {self.aggregation!r}")
        if self.shared_generators and self.aggregation != "none":
            raise ValueError("aggregation applies to independent generators: set shared_generators: false")
        if self.page_optimizer_state not in (True, False, "auto"):
            raise ValueError(f"page_optimizer_state must be true, false or 'auto', got {self.page_optimizer_state!r}")

    @property
    def per_client_results(self) -> bool:
        """Whether the trained generators are each client's own (independent without averaging)."""
        return per_client_results(self.shared_generators, self.aggregation)

    def due(self, round: int, every_n_rounds: int) -> bool:
        """Whether an every-``k``-rounds job (checkpoint, evaluation, previews) runs after ``round``:
        every ``k``-th round, and always after the final one."""
        return round % every_n_rounds == 0 or round >= self.max_rounds


def per_client_results(shared_generators: bool, aggregation: str) -> bool:
    """Whether a run's trained generators are each client's own rather than the server's: independent
    generators without aggregation (shared and FedAvg runs end with the server's bank)."""
    return not shared_generators and aggregation == "none"
