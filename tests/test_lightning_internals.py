"""Guards the private Lightning internals behind :mod:`a2vgen.lightning_adapter` by their behaviour: a
Lightning release that moves them fails here (short fits, batch limits, no validation, an exact resume)."""

import lightning
import pytest
import torch
from lightning.pytorch import Callback

from a2vgen.callbacks import RoundCheckpoint
from a2vgen.data.clients import ClientSpec
from a2vgen.lightning_adapter import LIGHTNING_MINOR, EpochFitLoop
from a2vgen.modules import PerClassGenerator
from a2vgen.trainer import FederatedTrainer
from conftest import module_for, small_datamodule
from federation_helpers import StopAfterVisits, federated_fit


def test_lightning_minor_version_is_the_pinned_one():
    assert lightning.__version__.startswith(LIGHTNING_MINOR + "."), "a2vgen.lightning_adapter: re-check it"


def test_the_adapter_trains_exactly_the_attached_batches_and_never_validates():
    dm = small_datamodule([ClientSpec("0", classes=["dog", "rain"]), ClientSpec("1", classes=["rain"])], batch_size=2)
    module = module_for(PerClassGenerator, dm)
    watcher = Watcher()
    trainer = federated_fit(module, dm, [watcher], max_rounds=2, local_epochs=2, limit_train_batches=2)
    assert isinstance(trainer.fit_loop, EpochFitLoop) and trainer.fit_loop.finished
    assert watcher.batches == [2] * (2 * 2 * 2)  # rounds x clients x local epochs, 2 batches each
    assert trainer.global_step == 2 * 2 * 2 * 2
    assert watcher.validations == 0  # the clients have val splits: fit still never validates
    assert watcher.sampler_epochs == [0, 1] * (2 * 2)  # batch order follows the local epoch, not Lightning's count


@pytest.mark.parametrize("stack", [False, True], ids=["apart", "stacked"])
def test_a_fraction_of_each_visit_is_trained(stack):
    dm = small_datamodule([ClientSpec("0", classes=["dog", "rain"])], batch_size=2)
    watcher = Watcher()
    module = module_for(PerClassGenerator, dm)
    federated_fit(module, dm, [watcher], max_rounds=1, limit_train_batches=0.5, stack_generators=stack)
    # key-grouped batches after fit's key map; stacked: rows of one batch per key
    available = len(dm.client("0").dataloader("train", ["dog", "rain"], stack_keys=stack))
    assert available > 2
    assert watcher.batches == [max(1, int(available * 0.5))]


def test_a_mid_round_resume_through_the_adapter_is_exact(tmp_path):
    clients = [ClientSpec("0", classes=["dog"]), ClientSpec("1", classes=["dog", "rain"])]

    def run(folder, callbacks=(), resume=False):
        dm = small_datamodule(clients)
        module = module_for(PerClassGenerator, dm, input_noise=0.2)
        checkpoint = RoundCheckpoint(dirpath=str(folder), every_n_visits=1)
        trainer = federated_fit(
            module, dm, [checkpoint, *callbacks], ckpt_path="last" if resume else None, max_rounds=2, local_epochs=2
        )
        return trainer, module

    full_trainer, full = run(tmp_path / "full")
    stopped, _ = run(tmp_path / "cut", [StopAfterVisits(3)])
    assert (stopped.fit_loop.round, stopped.fit_loop.position) == (2, 1)
    watcher = Watcher()
    trainer, resumed = run(tmp_path / "cut", [watcher], resume=True)
    assert len(watcher.batches) == 2  # one visit left, two local epochs
    assert trainer.global_step == full_trainer.global_step
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    for a, b in zip(full_trainer.optimizers[0].state.values(), trainer.optimizers[0].state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


class Watcher(Callback):
    """Counts the batches of each Lightning training epoch, its sampler's epoch and the validation runs."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.sampler_epochs: list[int] = []
        self.validations = 0

    def on_train_epoch_start(self, trainer, module) -> None:
        self.batches.append(0)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.sampler_epochs.append(trainer.train_dataloader.sampler.epoch)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.batches[-1] += 1

    def on_validation_start(self, trainer, module) -> None:
        self.validations += 1


def test_each_local_epoch_is_a_lightning_epoch_with_the_usual_hooks():
    dm = small_datamodule([ClientSpec("0", classes=["dog"]), ClientSpec("1", classes=["rain"])])
    module = module_for(PerClassGenerator, dm)
    trainer = federated_fit(module, dm, max_rounds=2, local_epochs=3)
    assert trainer.current_epoch == 2 * 2 * 3
    batches = sum(1 for _ in dm.client("0").dataloader("train", ["dog"]))
    assert trainer.global_step == 2 * 3 * 2 * batches
    assert int(module.bank["dog"].age) == 2 * 3


@pytest.mark.parametrize("bar", [True, False], ids=["bar", "no-bar"])
def test_step_loss_is_logged_only_for_a_progress_bar(bar):
    dm = small_datamodule([ClientSpec("0", classes=["dog"])])
    trainer = FederatedTrainer(logger=False, enable_checkpointing=False, enable_progress_bar=bar, max_rounds=1)
    trainer.fit(module_for(PerClassGenerator, dm), datamodule=dm)
    assert ("loss" in trainer.progress_bar_metrics) == bar


def test_mixed_precision_runs_through_the_same_loop():
    dm = small_datamodule([ClientSpec("0", classes=["dog", "rain"])])
    module = module_for(PerClassGenerator, dm)
    before = [p.detach().clone() for p in module.bank["dog"].parameters()]
    trainer = federated_fit(module, dm, max_rounds=1, precision="bf16-mixed")
    assert trainer.precision == "bf16-mixed"
    assert any(not torch.equal(p, q) for p, q in zip(before, module.bank["dog"].parameters()))
    assert all(p.dtype == torch.float32 for p in module.parameters())  # master weights stay fp32
