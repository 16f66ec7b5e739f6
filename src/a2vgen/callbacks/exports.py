"""Export every generator at the end of fit: one safetensors + JSON file per key (or per client and key)."""

from __future__ import annotations

import logging

from lightning.pytorch import Callback

from a2vgen.federation.view import federation_of, output_path
from a2vgen.modules.export_format import export_bank

log = logging.getLogger(__name__)


class ExportGenerators(Callback):
    """Write exports to ``dirpath`` (default: ``<run dir>/exports``) when training ends.

    Shared or aggregated runs export the server's generators; independent runs without aggregation
    export each client's generators (``client-<id>.<key>.*``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer, module) -> None:
        if trainer.fast_dev_run:  # a smoke test writes nothing, like Lightning's checkpoints and logs
            return
        out = output_path(trainer, self.dirpath, "exports")
        banks = federation_of(trainer).results()
        written = [p for owner, bank in banks.items() for p in export_bank(module, bank, out, client=owner)]
        log.info("exported %d generator files to %s", len(written), out)
        untrained = sorted({key for bank in banks.values() for key, slot in bank.items() if int(slot.age) == 0})
        if untrained:
            log.warning("generators %s were never trained (age 0, no class seen): their exports hold initial weights",
                        untrained)  # fmt: skip
