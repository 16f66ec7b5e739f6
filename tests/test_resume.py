"""Stopping in the middle of a round and resuming ends with the weights of an uninterrupted run."""

import pytest
import torch

from a2vgen.callbacks import ClassChangeResetCallback, RoundCheckpoint
from a2vgen.data.clients import ClientSpec
from a2vgen.modules import FlowPerClassGenerator, PerClassGenerator
from conftest import module_for, small_datamodule
from federation_helpers import StopAfterVisits, federated_fit

CLIENTS = [
    ClientSpec("0", schedule={1: ["dog"], 2: ["dog", "rooster"]}),
    ClientSpec("1", classes=["dog", "rain"]),
    ClientSpec("2", schedule={1: ["rain"], 3: ["rain", "sea_waves"]}),
    ClientSpec("3", classes=["rooster", "sea_waves"]),
]
OPTIONS = {"max_rounds": 3, "local_epochs": 2, "shuffle_clients": True, "client_fraction": 0.75}


def run(tmp_path, shared, stop_after=None, resume=False, cls=PerClassGenerator):
    dm = small_datamodule(CLIENTS)
    module = module_for(cls, dm, input_noise=0.2)
    reset = ClassChangeResetCallback(scope="client")
    callbacks = [reset, RoundCheckpoint(dirpath=str(tmp_path), every_n_visits=1)]
    if stop_after:
        callbacks.append(StopAfterVisits(stop_after))
    options = dict(OPTIONS, shared_generators=shared, aggregation="none" if shared else "fedavg")
    trainer = federated_fit(module, dm, callbacks=callbacks, ckpt_path="last" if resume else None, **options)
    return trainer, module, reset


@pytest.mark.parametrize("cls", [PerClassGenerator, FlowPerClassGenerator], ids=["vae", "flow"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "independent"])
def test_resume_mid_round_matches_an_uninterrupted_run(tmp_path, shared, cls):
    full_trainer, full, full_reset = run(tmp_path / "full", shared, cls=cls)
    stopped_trainer, _, _ = run(tmp_path / "cut", shared, stop_after=4, cls=cls)
    assert (stopped_trainer.fit_loop.round, stopped_trainer.fit_loop.position) == (
        2,
        1,
    )  # 3 visits a round: stopped after the first of round 2
    trainer, resumed, reset = run(tmp_path / "cut", shared, resume=True, cls=cls)
    assert trainer.fit_loop.round == 4 and trainer.fit_loop.visits == full_trainer.fit_loop.visits == 9
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    if not shared:
        for cid, bank in full_trainer.fit_loop.generators.client_banks.items():
            other = trainer.fit_loop.generators.client_banks[cid]
            assert all(torch.equal(p, q) for p, q in zip(bank.state_dict().values(), other.state_dict().values()))
    # the resumed run repeated no reset: its record equals the uninterrupted run's
    assert reset.events == full_reset.events
    assert reset.reset_counts == full_reset.reset_counts
    assert trainer.fit_loop.resets == full_trainer.fit_loop.resets  # the federation's record, from the checkpoint
