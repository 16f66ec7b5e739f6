"""The federated fit loop: rounds of client visits, each a few local epochs, in one ``Trainer.fit``.

It builds on :class:`a2vgen.lightning_adapter.EpochFitLoop`, the one place that touches Lightning's private
loop API. Each local epoch is a regular Lightning training epoch, so module and callback hooks, precision,
accelerators and loggers work as usual.
"""

from __future__ import annotations

import logging
import time

import torch

from a2vgen.data.client import ClientDataModule
from a2vgen.data.clients import ClientSpec
from a2vgen.data.datamodule import FederatedDataModule
from a2vgen.federation.aggregation import fedavg, weighted_average
from a2vgen.federation.config import FederationConfig
from a2vgen.federation.metrics_file import flush_loggers, metrics_rows, truncate_metrics
from a2vgen.federation.paging import OptimizerPager, copy_out, file_mappings, release_mappings, wants_paging
from a2vgen.federation.server import PreviewPipeline
from a2vgen.federation.state import IndependentGenerators, Owner, SharedGenerators
from a2vgen.federation.view import ClientVisit, ResetEvent
from a2vgen.lightning_adapter import EpochFitLoop
from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import ADAPTER_KEY, BaseGeneratorModule
from a2vgen.seeding import key_seed

log = logging.getLogger(__name__)


def call_federation_hook(trainer, name: str, *args) -> None:
    """Call ``name(trainer, module, *args)`` on every callback that defines it."""
    for callback in trainer.callbacks:
        hook = getattr(callback, name, None)
        if callable(hook):
            hook(trainer, trainer.lightning_module, *args)


class FederatedFitLoop(EpochFitLoop):
    """Runs ``max_rounds`` rounds; each visits the selected clients and trains ``local_epochs`` epochs on each.

    Callbacks may define ``on_round_start(trainer, module, round)``, ``on_client_start(trainer, module,
    visit)``, ``on_client_end(trainer, module, visit)`` and ``on_round_end(trainer, module, round)``. The
    loop's cursor (round, position in the round's client order), the per-round sample counts, the reset
    events and the independent clients' generators go into checkpoints; a resumed run continues with the
    next visit.
    """

    def __init__(self, trainer, config: FederationConfig, server: PreviewPipeline) -> None:
        super().__init__(trainer)
        self.config = config
        self.server = server
        self.round = 1
        self.position = 0
        self.visits = 0
        self.round_samples: dict[str, dict[str, float]] = {}
        self.generators: SharedGenerators | IndependentGenerators | None = None
        self._pending_state: dict | None = None
        self.current_visit: ClientVisit | None = None
        self.resets: list[ResetEvent] = []
        self.pager: OptimizerPager | None = None

    @property
    def finished(self) -> bool:
        return self.round > self.config.max_rounds

    # ------------------------------------------------------------------ federation
    @property
    def datamodule(self) -> FederatedDataModule:
        dm = self.trainer.datamodule
        if not isinstance(dm, FederatedDataModule):
            raise TypeError(f"federated fit needs a FederatedDataModule, got {type(dm).__name__}")
        return dm

    def client_order(self, round: int) -> list[ClientSpec]:
        """The clients visited in ``round``: all, or a seeded fraction, in order or seeded-shuffled."""
        clients = list(self.datamodule.clients)
        g = torch.Generator().manual_seed(key_seed(self.config.seed, f"round-{round}"))
        if self.config.shuffle_clients:
            clients = [clients[i] for i in torch.randperm(len(clients), generator=g).tolist()]
        if self.config.client_fraction < 1.0:
            count = max(1, int(self.config.client_fraction * len(clients) + 0.5))  # rounded half up
            chosen = sorted(torch.randperm(len(clients), generator=g)[:count].tolist())
            clients = [clients[i] for i in chosen]
        return clients

    def _setup_generators(self, module: BaseGeneratorModule) -> None:
        dm = self.datamodule
        if self.config.shared_generators:
            self.generators = SharedGenerators(module, self.trainer)
            log.info(
                "shared generators: every client trains the server's %d generators",
                len(module.generator_keys),
            )
        else:
            client_keys = {spec.id: module.keys_for(spec.all_classes) for spec in dm.clients}
            averaged = not self.config.per_client_results
            self.generators = IndependentGenerators(module, self.trainer, client_keys, averaged)
            log.info("independent generators: %d clients keep their own generators", len(client_keys))
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def prepare(self) -> None:
        """Key map into the data, the generators' owners (and a checkpoint's state), the pipeline in full mode."""
        module: BaseGeneratorModule = self.trainer.lightning_module
        self.datamodule.set_key_map(module.class_to_key, module.generator_keys)
        restored = self._pending_state is not None
        self._setup_generators(module)
        self.pager = None  # a fit's optimizers are its own: so are their pages
        if wants_paging(self.config.page_optimizer_state, module.bank):
            self.pager = OptimizerPager(self.trainer.default_root_dir)
            log.info("optimizer state of generators outside a visit is paged to files in %s", self.pager.root)
        if restored and self.trainer.ckpt_path:
            self._release_checkpoint(module, self.trainer.ckpt_path)
        if not self.server.generator_only:
            self.server.pipeline(self.trainer.strategy.root_device)
            self.server.check_prompt_space(module.cond_shapes)
            if module.bank.adapter is None:
                log.warning("full mode without an adapter (model.train_adapter: false): previews cannot be rendered")

    def _release_checkpoint(self, module: BaseGeneratorModule, path: str) -> None:
        """After resuming from a memory-mapped checkpoint (:class:`~a2vgen.federation.checkpoint_io.LocalCheckpointIO`),
        before any step: move the restored optimizer state out of the file (to page files when paging, else
        into memory), one generator at a time, dropping the file's pages as it goes. Nothing then refers to
        the file, so its memory and, once replaced, its disk space come back."""
        maps = file_mappings(path)
        if not maps:
            return
        if self.pager is not None:
            self.pager.page_out(module.bank, self.trainer.optimizers, release=maps)
        copy_out(self._optimizers(), maps)
        release_mappings(maps)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        """The trainer's optimizers and those of independent clients' generators."""
        return list(self.trainer.optimizers) + list(getattr(self.generators, "optimizers", {}).values())

    def owners(self) -> dict[Owner, GeneratorBank]:
        """Every generator bank there is, by owner (a client id; ``None``: the server)."""
        return self.generators.owners()

    def results(self) -> dict[Owner, GeneratorBank]:
        """The banks holding what the run trained (see :meth:`IndependentGenerators.results`)."""
        return self.generators.results()

    def run_epochs(self) -> None:
        module: BaseGeneratorModule = self.trainer.lightning_module
        while not self.finished and not self.trainer.should_stop:
            self.run_round(module)

    def run_round(self, module: BaseGeneratorModule) -> None:
        order = self.client_order(self.round)
        if self.position == 0:
            self.round_samples = {}
            log.info("round %d/%d: clients %s", self.round, self.config.max_rounds, [c.id for c in order])
            call_federation_hook(self.trainer, "on_round_start", self.round)
        while self.position < len(order) and not self.trainer.should_stop:
            visit = self.visit(module, order[self.position])
            self.position += 1  # the cursor moves before on_client_end, so a checkpoint there resumes after it
            if visit is not None:
                self.visits += 1
                call_federation_hook(self.trainer, "on_client_end", visit)
        if self.position < len(order):
            return
        if not self.config.shared_generators and self.config.aggregation == "fedavg":
            self.aggregate(module)
        finished = self.round
        self.round += 1
        self.position = 0
        call_federation_hook(self.trainer, "on_round_end", finished)

    def visit(self, module: BaseGeneratorModule, spec: ClientSpec) -> ClientVisit | None:
        """Train ``spec``'s active classes for ``local_epochs`` epochs (``None``: no samples, or the visit failed)."""
        client: ClientDataModule = self.datamodule.client(spec.id)
        classes = spec.classes_at(self.round)
        count = client.num_samples("train", classes)
        if count == 0:
            log.warning(
                "client %s: no training samples for classes %s in round %d: skipped",
                spec.id,
                classes,
                self.round,
            )
            return None
        start = time.perf_counter()
        visit = ClientVisit(spec, self.round, self.position, classes, module.keys_for(classes), count)
        self.current_visit = visit
        stats = self.train_visit(module, visit)
        if stats is None:
            return None
        visit.stats = stats
        visit.seconds = time.perf_counter() - start
        for key, values in visit.stats.items():
            per_client = self.round_samples.setdefault(spec.id, {})
            per_client[key] = per_client.get(key, 0.0) + values["samples"]
        self.log_visit(visit)
        return visit

    def train_visit(self, module: BaseGeneratorModule, visit: ClientVisit) -> dict[str, dict[str, float]] | None:
        """The training part of a visit, here: the client's generators, ``on_client_start``, the local epochs.

        Returns the visit's stats per key (see :meth:`BaseGeneratorModule.pop_visit_stats`). A subclass may
        train elsewhere (e.g. on a remote node) and return ``None`` when the visit did not happen.
        """
        spec = visit.client
        bank = self.generators.activate(spec.id)
        if self.pager is not None:  # before on_client_start, whose resets drop optimizer state
            self.pager.page_in(bank, visit.keys, self.trainer.optimizers)
        mode = "shared generators from the server" if self.config.shared_generators else "its own generators"
        log.info("client %s: training %s (%d generators) on classes %s", spec.id, mode, len(bank.keys), visit.classes)
        seed = key_seed(self.config.seed, f"round-{visit.round}/client-{spec.id}")
        torch.manual_seed(seed)
        call_federation_hook(self.trainer, "on_client_start", visit)
        with module.local_training(visit.keys, self.config.stack_generators) as stacked:
            client = self.datamodule.client(spec.id)
            loader = client.dataloader("train", visit.classes, seed=seed % (2**31), stack_keys=stacked)
            self.attach_loader(loader, visit_batches(len(loader), self.trainer.limit_train_batches))
            for epoch in range(self.config.local_epochs):
                self.train_epoch(epoch)  # batch order depends on (seed, round, client, local epoch) only
                if self.trainer.should_stop:
                    break
        stats = module.pop_visit_stats()
        if self.pager is not None:
            self.pager.page_out(bank, self.trainer.optimizers)
        self.generators.deactivate()
        return stats

    def aggregate(self, module: BaseGeneratorModule) -> None:
        """FedAvg per key over the clients that trained it this round; every holder gets the average.
        The adapter (full mode) is averaged over every client that trained this round."""
        banks = self.generators.banks()
        if module.bank.adapter is not None:
            trained = [
                (banks[cid].adapter, s[ADAPTER_KEY]) for cid, s in self.round_samples.items() if s.get(ADAPTER_KEY)
            ]
            if trained:
                weighted_average(trained, [bank.adapter for bank in banks.values()] + [module.bank.adapter])
        for key in module.generator_keys:
            contributions = [
                (banks[cid], samples[key]) for cid, samples in self.round_samples.items() if samples.get(key, 0) > 0
            ]
            if not contributions:
                continue
            holders = [bank for bank in banks.values() if key in bank] + [module.bank]
            fedavg(key, contributions, holders)
            log.info("round %d: fedavg of %r over clients %s", self.round, key,
                     [cid for cid, s in self.round_samples.items() if s.get(key, 0) > 0])  # fmt: skip

    def log_visit(self, visit: ClientVisit) -> None:
        """Log the visit's metrics (flushed now: a crash loses no finished visit) and one summary line."""
        metrics = {"round": float(visit.round), "client_seconds": visit.seconds}
        for key, values in visit.stats.items():
            for part, value in values.items():
                metrics[f"train/{visit.client.id}/{key}/{part}"] = value
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.visits)
        flush_loggers(self.trainer)
        summary = ", ".join(f"{k}={v['loss']:.4g}" for k, v in visit.stats.items())
        log.info("round %d/%d client %s %s: loss %s (%.2fs)", visit.round, self.config.max_rounds,
                 visit.client.id, visit.classes, summary, visit.seconds)  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        flush_loggers(self.trainer)  # the checkpoint covers exactly the metric rows on disk now
        return {
            "metrics_rows": metrics_rows(self.trainer),
            "round": self.round,
            "position": self.position,
            "visits": self.visits,
            "round_samples": self.round_samples,
            "resets": [event.as_dict() for event in self.resets],
            "shared_generators": self.config.shared_generators,
            "aggregation": self.config.aggregation,
            "generators": self.generators.state_dict() if self.generators is not None else {},
        }

    def load_checkpoint_state(self, state: dict) -> None:
        self._pending_state = state

    def _restore(self, state: dict) -> None:
        if state.get("shared_generators") != self.config.shared_generators:
            raise ValueError(
                f"checkpoint was trained with shared_generators={state.get('shared_generators')}, "
                f"this run has shared_generators={self.config.shared_generators}"
            )
        self.round, self.position, self.visits = state["round"], state["position"], state["visits"]
        self.round_samples = state["round_samples"]
        self.resets = [ResetEvent(**event) for event in state.get("resets", [])]  # none in older checkpoints
        self.generators.load_state_dict(state["generators"])
        truncate_metrics(self.trainer, state.get("metrics_rows"))
        self._apply_optimizer_hparams()
        log.info("resuming at round %d, visit %d of the round", self.round, self.position + 1)

    def _apply_optimizer_hparams(self) -> None:
        """The module's ``lr`` and ``weight_decay`` (which may change on resume) over the restored optimizers."""
        hp = self.trainer.lightning_module.hparams
        for group in (g for opt in self._optimizers() for g in opt.param_groups):
            group["lr"], group["weight_decay"] = hp.lr, hp.weight_decay


def visit_batches(available: int, limit: int | float) -> int:
    """Batches of one local epoch under ``trainer.limit_train_batches`` (a count, or a fraction of the visit's)."""
    if isinstance(limit, float):
        return min(available, max(1, int(available * limit))) if limit > 0 else 0
    return min(available, limit)
