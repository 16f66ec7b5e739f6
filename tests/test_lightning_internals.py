"""Guards the private Lightning internals the federated loop relies on: fails loudly when they move."""

import inspect

import lightning
import pytest
import torch
from lightning.pytorch.loops.fit_loop import _FitLoop
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.loops.utilities import _select_data_fetcher
from lightning.pytorch.strategies import Strategy

from a2vgen.data.clients import ClientSpec
from a2vgen.federation import FederatedTrainer
from a2vgen.modules import PerClassGenerator
from conftest import module_for, small_datamodule
from federation_helpers import federated_fit


def test_lightning_minor_version_is_the_pinned_one():
    assert lightning.__version__.startswith("2.6."), "the federated loop subclasses private _FitLoop: re-check it"


def test_private_loop_api_is_where_the_loop_expects_it():
    for name in ("on_advance_start", "advance", "on_advance_end", "on_iteration_done", "on_run_start", "on_run_end"):
        assert callable(getattr(_FitLoop, name)), name
    assert "data_fetcher" in inspect.signature(_TrainingEpochLoop.run).parameters
    assert callable(_TrainingEpochLoop._should_check_val_fx)
    assert list(inspect.signature(_select_data_fetcher).parameters)[:2] == ["trainer", "stage"]
    assert isinstance(Strategy.optimizers, property) and Strategy.optimizers.fset is not None
    for attr in ("_data_fetcher", "_combined_loader", "max_batches", "epoch_loop", "epoch_progress"):
        assert attr in inspect.getsource(_FitLoop.__init__), attr


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
