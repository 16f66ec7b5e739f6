"""One owner of generator ownership: the live federation and its checkpoints name the same banks; the
helpers every callback and tool shares (round due, output folders, a batch's conditioning) decide alike."""

import pytest
import torch

from a2vgen.batch import sample_cond, subset_cond
from a2vgen.callbacks import RoundCheckpoint
from a2vgen.data.clients import ClientSpec
from a2vgen.federation import FederationConfig, federation_of
from a2vgen.federation.checkpoint import load_module, stored_owners, stored_results
from a2vgen.federation.view import output_path
from a2vgen.modules import PerClassGenerator
from conftest import module_for, small_datamodule
from federation_helpers import federated_fit

CLIENTS = [ClientSpec("0", classes=["dog"]), ClientSpec("1", classes=["dog", "rain"])]


def states(banks) -> dict:
    return {owner: {k: v for k, v in bank.state_dict().items()} for owner, bank in banks.items()}


@pytest.mark.parametrize(
    ("shared", "aggregation", "results"),
    [(True, "none", [None]), (False, "fedavg", [None]), (False, "none", ["0", "1"])],
    ids=["shared", "fedavg", "independent"],
)
def test_the_federation_and_its_checkpoint_name_the_same_owners(tmp_path, shared, aggregation, results):
    dm = small_datamodule(CLIENTS)
    module = module_for(PerClassGenerator, dm)
    trainer = federated_fit(
        module, dm, [RoundCheckpoint(dirpath=str(tmp_path))], max_rounds=1,
        shared_generators=shared, aggregation=aggregation,
    )  # fmt: skip
    federation = federation_of(trainer)
    assert list(federation.results()) == results
    assert list(federation.owners()) == ([None] if shared else [None, "0", "1"])
    assert federation.owners()[None] is module.bank
    loaded, ckpt = load_module(tmp_path / "last.ckpt")
    for live, stored in ((federation.results(), stored_results(loaded, ckpt)), (federation.owners(), stored_owners(loaded, ckpt))):  # fmt: skip
        assert list(stored) == list(live)
        for owner, tensors in states(live).items():
            for name, tensor in tensors.items():
                assert torch.equal(tensor, states(stored)[owner][name]), (owner, name)


def test_federation_of_a_plain_trainer_is_a_clear_error():
    from lightning.pytorch import Trainer

    with pytest.raises(TypeError, match="need a FederatedTrainer"):
        federation_of(Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False))


def test_every_k_rounds_jobs_run_every_kth_round_and_after_the_last():
    config = FederationConfig(max_rounds=5)
    assert [r for r in range(1, 6) if config.due(r, 2)] == [2, 4, 5]
    assert [r for r in range(1, 6) if config.due(r, 1)] == [1, 2, 3, 4, 5]


def test_outputs_go_to_the_given_path_else_into_the_run_folder(tmp_path):
    class Trainer:
        log_dir, default_root_dir = str(tmp_path / "run"), str(tmp_path / "root")

    assert output_path(Trainer(), None, "exports") == tmp_path / "run" / "exports"
    assert output_path(Trainer(), str(tmp_path / "mine"), "exports") == tmp_path / "mine"
    Trainer.log_dir = None
    assert output_path(Trainer(), None, "exports") == tmp_path / "root" / "exports"


def test_per_class_and_per_sample_conditioning_read_alike():
    rows = [torch.randn(2, 3)]  # two classes' conditioning
    index = torch.tensor([1, 0, 1])
    per_class = {"cond": rows, "cond_index": index}
    per_sample = {"cond": [rows[0][index]]}
    assert torch.equal(sample_cond(per_class)[0], sample_cond(per_sample)[0])
    mask = torch.tensor([True, False, True])
    cond, picked = subset_cond(per_class, mask)
    assert cond is rows and picked.tolist() == [1, 1]  # per-class rows stay whole
    cond, picked = subset_cond(per_sample, mask)
    assert picked is None and torch.equal(cond[0], rows[0][[1, 1]])
