"""Export every generator at the end of fit: one safetensors + JSON file per key (or per client and key)."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback

from a2vgen.export import export_bank

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
        out = Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "exports")
        loop = trainer.fit_loop
        banks = loop.generators.banks() if loop.config.aggregation == "none" else {}
        if not banks:
            written = export_bank(module, module.bank, out)
        else:
            written = [p for cid, bank in banks.items() for p in export_bank(module, bank, out, client=cid)]
        log.info("exported %d generator files to %s", len(written), out)
        untrained = sorted({key for bank in (banks or {None: module.bank}).values() for key, slot in bank.items()
                            if int(slot.age) == 0})  # fmt: skip
        if untrained:
            log.warning("generators %s were never trained (age 0, no class seen): their exports hold initial weights",
                        untrained)  # fmt: skip
