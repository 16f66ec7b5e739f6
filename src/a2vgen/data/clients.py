"""Client descriptions: plain dataclasses, so that LightningCLI can read them from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClientSpec:
    """One federated client.

    Args:
        id: the client's name (unique).
        classes: the classes it trains every round (ignored when ``schedule`` is given).
        schedule: ``{round: [classes]}``; rounds count from 1 and an entry holds from that round on,
            e.g. ``{1: [dog], 5: [dog, rooster]}`` (class-incremental learning).
        group: pin the client to one group (``per_group`` only): all its classes must belong to it.
    """

    id: str
    classes: list[str] = field(default_factory=list)
    schedule: dict[int, list[str]] | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        self.id = str(self.id)
        if self.schedule:
            self.schedule = {int(r): list(c) for r, c in self.schedule.items()}
            if min(self.schedule) < 1:
                raise ValueError(f"client {self.id!r}: schedule rounds count from 1, got {sorted(self.schedule)}")
        if not self.schedule and not self.classes:
            raise ValueError(f"client {self.id!r} has neither classes nor a schedule")

    def classes_at(self, round: int) -> list[str]:
        """The classes this client trains in ``round`` (empty before its first scheduled round)."""
        if not self.schedule:
            return list(self.classes)
        started = [r for r in self.schedule if r <= round]
        return list(self.schedule[max(started)]) if started else []

    @property
    def all_classes(self) -> list[str]:
        """Every class the client ever holds (its data partition covers all of them)."""
        if not self.schedule:
            return list(self.classes)
        return list(dict.fromkeys(c for r in sorted(self.schedule) for c in self.schedule[r]))


def demo_clients() -> list[ClientSpec]:
    """The demo federation: 3 clients, class-incremental schedules, two classes held by two clients."""
    return [
        ClientSpec("0", schedule={1: ["dog", "rain", "sea_waves"], 3: ["dog", "rain", "sea_waves", "rooster"]}),
        ClientSpec("1", schedule={1: ["crackling_fire", "crying_baby", "dog"], 2: ["crackling_fire", "crying_baby", "dog", "clock_tick"]}),
        ClientSpec("2", schedule={1: ["helicopter", "chainsaw"], 3: ["helicopter", "chainsaw", "church_bells", "rain"]}),
    ]  # fmt: skip
