"""The contract every generator network follows, whatever its type."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class GeneratorNetwork(Protocol):
    """A conditional generator ``p(audio | cond)`` as a plain ``nn.Module``.

    How it trains is up to the module's ``compute_loss`` (the network's ``forward`` is free). What the
    rest of a2vgen relies on:

    - ``config``: plain JSON values such that ``type(net)(**net.config)`` rebuilds the same architecture
      (exports record it beside the weights; the type is looked up in
      :data:`~a2vgen.nn.registry.GENERATORS` by its registered name);
    - ``sample(n, cond, generator=None, cond_index=None)`` → ``[n, L, D_a]``. ``cond`` is a list of
      conditioning tensors, per sample (``[n, ...]``), one row for all samples (``[1, ...]``), or distinct
      rows picked per sample by ``cond_index`` (``[n]``); ``None`` for an unconditioned network.
    - ``state_dict`` / ``load_state_dict`` / ``parameters`` of an ``nn.Module``.
    """

    @property
    def config(self) -> dict[str, Any]: ...

    def sample(
        self,
        n: int,
        cond: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        cond_index: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any: ...
